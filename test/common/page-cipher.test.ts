/**
 * The page pipeline under the kvm backend's memory model (the keystream of
 * native/guest/abi.h): sealing decrypts, opening encrypts and the view MACs
 * decrypt with it exactly as kvmKeystreamXor does, and only there; the sim
 * model (a bare key, AES-XTS) is unchanged. The keystream itself is the
 * addon's, so this needs no /dev/kvm.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/common/native.js';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import {
  type MemoryCodec,
  openFrameToPages,
  SEALED_PAGE_BYTES,
  sealPagesToFrame,
  viewMacs,
} from '../../src/common/page-crypto.js';

const PAGE = 4096;
const macKey = new Uint8Array(randomBytes(16));

function gmac(gpa: number, page: Uint8Array): Buffer {
  const nonce = Buffer.alloc(12);
  nonce.writeBigUInt64LE(BigInt(gpa));
  const c = createCipheriv('aes-128-gcm', macKey, nonce);
  c.setAAD(page);
  c.final();
  return c.getAuthTag();
}

/** Raw bytes of `plain` stored by a kvm guest with `key` at GPA 0 (every page private). */
function stored(key: Uint8Array, plain: Uint8Array): Uint8Array {
  const raw = plain.slice();
  nativeAddon().kvmKeystreamXor(key, raw, 0);
  return raw;
}

const codec = (): MemoryCodec => ({ cipher: 'keystream', key: new Uint8Array(randomBytes(16)) });

describe('page pipeline: the keystream memory model', () => {
  it('seal then open moves the plaintext from one VM key to another, the MACs of the plaintext on both sides', () => {
    const src = codec();
    const dst = codec();
    const gcmKey = new Uint8Array(randomBytes(32));
    const plain = new Uint8Array(randomBytes(6 * PAGE));
    const memory = stored(src.key, plain);
    const gfns = new Float64Array([4, 1, 5]);
    const frame = new Uint8Array(3 * SEALED_PAGE_BYTES);
    const sent = new Uint8Array(6 * 16);
    sealPagesToFrame(src, gcmKey, memory, gfns, 7, frame, 0, { key: macKey, out: sent, byGfn: true });
    const into = new Uint8Array(6 * PAGE);
    const received = new Uint8Array(6 * 16);
    expect(
      openFrameToPages(gcmKey, dst, frame, 0, gfns, 7, into, { key: macKey, out: received, byGfn: true }),
    ).toBe(-1);
    const view = into.slice();
    nativeAddon().kvmKeystreamXor(dst.key, view, 0);
    for (const g of gfns) {
      const want = plain.subarray(g * PAGE, (g + 1) * PAGE);
      expect(Buffer.from(view.subarray(g * PAGE, (g + 1) * PAGE)).equals(want)).toBe(true);
      // Stored under the destination's own key: not the source's raw bytes.
      expect(
        Buffer.from(into.subarray(g * PAGE, (g + 1) * PAGE)).equals(
          memory.subarray(g * PAGE, (g + 1) * PAGE),
        ),
      ).toBe(false);
      expect(Buffer.from(sent.subarray(g * 16, g * 16 + 16)).equals(gmac(g * PAGE, want))).toBe(true);
      expect(Buffer.from(received.subarray(g * 16, g * 16 + 16)).equals(gmac(g * PAGE, want))).toBe(true);
    }
  });

  it('viewMacs decrypts exactly the pages whose c-bit is set', () => {
    const c = codec();
    const plain = new Uint8Array(randomBytes(4 * PAGE));
    const memory = stored(c.key, plain);
    const cbits = new PageBitmap(64);
    cbits.setRange(1, 2); // pages 1, 2 private; 0, 3 read raw
    const macs = viewMacs(c, macKey, memory, cbits.words, 0, 4);
    for (let g = 0; g < 4; g++) {
      const view = g === 1 || g === 2 ? plain : memory;
      expect(
        Buffer.from(macs.subarray(g * 16, g * 16 + 16)).equals(
          gmac(g * PAGE, view.subarray(g * PAGE, (g + 1) * PAGE)),
        ),
      ).toBe(true);
    }
  });

  it('the wrong key for the cipher, or an unknown cipher, is refused naming it', () => {
    const memory = new Uint8Array(PAGE);
    const cbits = new PageBitmap(64).words;
    expect(() =>
      viewMacs({ cipher: 'keystream', key: new Uint8Array(32) }, macKey, memory, cbits, 0, 1),
    ).toThrow(/memoryKey must be 16 bytes, got 32/);
    expect(() => viewMacs(new Uint8Array(16), macKey, memory, cbits, 0, 1)).toThrow(
      /memoryKey must be 32 bytes, got 16/,
    );
    expect(() =>
      nativeAddon().viewMacs(new Uint8Array(16), macKey, memory, cbits, 0, 1, new Uint8Array(16), 2),
    ).toThrow(/cipher must be 0 \(xts\) or 1 \(keystream\), got 2/);
  });
});
