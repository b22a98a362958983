import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/common/errors.js';
import { nativeAddon } from '../../src/common/native.js';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import {
  copyFrameToPages,
  copyPagesToFrame,
  newMemoryKey,
  openFrameToPages,
  openPages,
  SEALED_PAGE_BYTES,
  sealPages,
  sealPagesToFrame,
  VIEW_MAC_BYTES,
  viewMacs,
  xtsDecryptPages,
  xtsEncryptPages,
  xtsGather,
} from '../../src/common/page-crypto.js';

function tweak(gpa: number): Buffer {
  const t = Buffer.alloc(16);
  t.writeBigUInt64LE(BigInt(gpa));
  return t;
}

describe('native page crypto matches node:crypto', () => {
  it('AES-128-XTS with tweak = GPA, per page', () => {
    const key = newMemoryKey();
    const plain = randomBytes(3 * 4096);
    const out = new Uint8Array(plain.length);
    const gpa = 0x1_2345_6000; // above 4 GiB
    xtsEncryptPages(key, plain, out, gpa, 3);
    for (let p = 0; p < 3; p++) {
      const c = createCipheriv('aes-128-xts', key, tweak(gpa + p * 4096));
      const want = Buffer.concat([c.update(plain.subarray(p * 4096, (p + 1) * 4096)), c.final()]);
      expect(Buffer.from(out.subarray(p * 4096, (p + 1) * 4096)).equals(want)).toBe(true);
    }
    // The same plaintext at another GPA encrypts differently; decryption in place round-trips.
    const other = new Uint8Array(4096);
    xtsEncryptPages(key, plain, other, gpa + 4096 * 7, 1);
    expect(Buffer.from(other).equals(Buffer.from(out.subarray(0, 4096)))).toBe(false);
    xtsDecryptPages(key, out, out, gpa, 3);
    expect(Buffer.from(out).equals(plain)).toBe(true);
  });

  it('AES-256-GCM sealing with GPA and sequence as associated data', () => {
    const key = new Uint8Array(randomBytes(32));
    const plain = randomBytes(2 * 4096);
    const gpas = new Float64Array([0x5000, 2 ** 40]);
    const sealed = new Uint8Array(2 * SEALED_PAGE_BYTES);
    sealPages(key, plain, sealed, gpas, 77);
    // Page 1 with node:crypto.
    const nonce = Buffer.alloc(12);
    nonce.writeBigUInt64LE(78n);
    const aad = Buffer.alloc(16);
    aad.writeBigUInt64LE(BigInt(2 ** 40));
    aad.writeBigUInt64LE(78n, 8);
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(aad);
    d.setAuthTag(Buffer.from(sealed.subarray(SEALED_PAGE_BYTES + 4096, 2 * SEALED_PAGE_BYTES)));
    const page1 = Buffer.concat([
      d.update(sealed.subarray(SEALED_PAGE_BYTES, SEALED_PAGE_BYTES + 4096)),
      d.final(),
    ]);
    expect(page1.equals(plain.subarray(4096))).toBe(true);

    const back = new Uint8Array(2 * 4096);
    expect(openPages(key, sealed, back, gpas, 77)).toBe(-1);
    expect(Buffer.from(back).equals(plain)).toBe(true);
    // Wrong GPA, wrong sequence, or a flipped bit: authentication fails at that page.
    expect(openPages(key, sealed, back, new Float64Array([0x5000, 0x6000]), 77)).toBe(1);
    expect(openPages(key, sealed, back, gpas, 78)).toBe(0);
    sealed[SEALED_PAGE_BYTES + 10] ^= 1;
    expect(openPages(key, sealed, back, gpas, 77)).toBe(1);
  });

  it('rejects short buffers and bad keys with the argument named', () => {
    expect(() => xtsEncryptPages(newMemoryKey(), new Uint8Array(4096), new Uint8Array(100), 0, 1)).toThrow(
      /dst holds 100 bytes/,
    );
    expect(() =>
      xtsEncryptPages(new Uint8Array(16), new Uint8Array(4096), new Uint8Array(4096), 0, 1),
    ).toThrow(/key must be 32 bytes/);
    expect(() =>
      xtsEncryptPages(new Uint8Array(32), new Uint8Array(4096), new Uint8Array(4096), 0, 1),
    ).toThrow(/key halves must differ/);
  });
});

/** GMAC of a page with node:crypto: AES-128-GCM, nonce = gpa (u64 LE) + 4 zero bytes, page as AAD. */
function gmac(key: Uint8Array, gpa: number, page: Uint8Array): Buffer {
  const nonce = Buffer.alloc(12);
  nonce.writeBigUInt64LE(BigInt(gpa));
  const c = createCipheriv('aes-128-gcm', key, nonce);
  c.setAAD(page);
  c.final();
  return c.getAuthTag();
}

/** A guest of n pages: page i holds seeded bytes, encrypted under xtsKey where i is odd. */
function guest(n: number, xtsKey: Uint8Array) {
  const plain = new Uint8Array(randomBytes(n * 4096));
  const memory = new Uint8Array(n * 4096);
  const cbits = new PageBitmap(n);
  for (let g = 0; g < n; g++) {
    const page = plain.subarray(g * 4096, (g + 1) * 4096);
    if (g % 2 === 1) {
      cbits.setRange(g, 1);
      xtsEncryptPages(xtsKey, page, memory.subarray(g * 4096), g * 4096, 1);
    } else memory.set(page, g * 4096);
  }
  return { plain, memory, cbits };
}

describe('view MACs and the frame pipeline', () => {
  const macKey = new Uint8Array(randomBytes(16));

  it('viewMacs is GMAC of the guest view (decrypted where the c-bit is set)', () => {
    const xtsKey = newMemoryKey();
    const { plain, memory, cbits } = guest(6, xtsKey);
    const macs = viewMacs(xtsKey, macKey, memory, cbits.words, 1, 5);
    expect(macs.length).toBe(5 * VIEW_MAC_BYTES);
    for (let i = 0; i < 5; i++) {
      const g = 1 + i;
      const want = gmac(macKey, g * 4096, plain.subarray(g * 4096, (g + 1) * 4096));
      expect(Buffer.from(macs.subarray(i * 16, (i + 1) * 16)).equals(want)).toBe(true);
    }
  });

  it('a single flipped bit anywhere in a page always changes its view MAC', () => {
    const xtsKey = newMemoryKey();
    const memory = new Uint8Array(randomBytes(4096));
    const cbits = new PageBitmap(64);
    const before = viewMacs(xtsKey, macKey, memory, cbits.words, 0, 1);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 4096 * 8 - 1 }), (bit) => {
        memory[bit >> 3] ^= 1 << (bit & 7);
        const after = viewMacs(xtsKey, macKey, memory, cbits.words, 0, 1);
        memory[bit >> 3] ^= 1 << (bit & 7);
        return !Buffer.from(after).equals(Buffer.from(before));
      }),
      { numRuns: 500, seed: 15 },
    );
  });

  it('refuses a MAC key of the wrong size', () => {
    expect(() =>
      viewMacs(newMemoryKey(), new Uint8Array(15), new Uint8Array(4096), new PageBitmap(64).words, 0, 1),
    ).toThrow(/macKey must be 16 bytes/);
  });

  it('sealPagesToFrame writes what xtsGather + sealPages would, at the offset, with the MACs of the plaintext', () => {
    const xtsKey = newMemoryKey();
    const gcmKey = new Uint8Array(randomBytes(32));
    const { plain, memory, cbits } = guest(8, xtsKey);
    cbits.setRange(0, 8);
    xtsEncryptPages(xtsKey, plain, memory, 0, 8); // every page private
    const gfns = new Float64Array([5, 2, 7]);
    const frame = new Uint8Array(100 + 3 * SEALED_PAGE_BYTES + 7).fill(0xee);
    const macs = new Uint8Array(3 * 16);
    sealPagesToFrame(xtsKey, gcmKey, memory, gfns, 40, frame, 100, { key: macKey, out: macs });
    const gathered = new Uint8Array(3 * 4096);
    xtsGather(xtsKey, false, memory, gathered, gfns);
    const want = new Uint8Array(3 * SEALED_PAGE_BYTES);
    sealPages(
      gcmKey,
      gathered,
      want,
      gfns.map((g) => g * 4096),
      40,
    );
    expect(Buffer.from(frame.subarray(100, 100 + want.length)).equals(Buffer.from(want))).toBe(true);
    expect(frame[99]).toBe(0xee);
    expect(frame[100 + want.length]).toBe(0xee);
    for (let i = 0; i < 3; i++) {
      const g = gfns[i];
      const mac = gmac(macKey, g * 4096, plain.subarray(g * 4096, (g + 1) * 4096));
      expect(Buffer.from(macs.subarray(i * 16, (i + 1) * 16)).equals(mac)).toBe(true);
    }
  });

  it('openFrameToPages lands the plaintext under the destination key, and stops at a tampered page', () => {
    const srcKey = newMemoryKey();
    const dstKey = newMemoryKey();
    const gcmKey = new Uint8Array(randomBytes(32));
    const { plain, memory } = guest(4, srcKey);
    xtsEncryptPages(srcKey, plain, memory, 0, 4);
    const gfns = new Float64Array([0, 1, 3]);
    const frame = new Uint8Array(16 + 3 * SEALED_PAGE_BYTES);
    sealPagesToFrame(srcKey, gcmKey, memory, gfns, 9, frame, 16);

    const dst = new Uint8Array(4 * 4096);
    const macs = new Uint8Array(3 * 16);
    expect(openFrameToPages(gcmKey, dstKey, frame, 16, gfns, 9, dst, { key: macKey, out: macs })).toBe(-1);
    const view = new Uint8Array(4 * 4096);
    xtsDecryptPages(dstKey, dst, view, 0, 4);
    for (const g of gfns) {
      expect(
        Buffer.from(view.subarray(g * 4096, (g + 1) * 4096)).equals(plain.subarray(g * 4096, (g + 1) * 4096)),
      ).toBe(true);
    }
    expect(Buffer.from(macs.subarray(32, 48)).equals(gmac(macKey, 3 * 4096, plain.subarray(3 * 4096)))).toBe(
      true,
    );

    const fresh = new Uint8Array(4 * 4096);
    frame[16 + SEALED_PAGE_BYTES + 5] ^= 4;
    expect(openFrameToPages(gcmKey, dstKey, frame, 16, gfns, 9, fresh)).toBe(1);
    expect(fresh.subarray(0, 4096).some((b) => b !== 0)).toBe(true); // page 0 verified and written
    expect(fresh.subarray(4096).every((b) => b === 0)).toBe(true); // the tampered page and those after: not
    // A gfn outside the guest is refused before any page is written.
    const untouched = new Uint8Array(4 * 4096);
    expect(() =>
      openFrameToPages(gcmKey, dstKey, frame, 16, new Float64Array([0, 1, 4]), 9, untouched),
    ).toThrow(RangeError);
    expect(untouched.every((b) => b === 0)).toBe(true);
  });

  it('shared pages: copy to a frame and back, with the MACs of their raw bytes', () => {
    const memory = new Uint8Array(randomBytes(5 * 4096));
    const gfns = new Float64Array([4, 0]);
    const frame = new Uint8Array(8 + 2 * 4096);
    const macs = new Uint8Array(32);
    copyPagesToFrame(memory, gfns, frame, 8, { key: macKey, out: macs });
    expect(Buffer.from(frame.subarray(8, 8 + 4096)).equals(Buffer.from(memory.subarray(4 * 4096)))).toBe(
      true,
    );
    const dst = new Uint8Array(5 * 4096);
    const dstMacs = new Uint8Array(32);
    copyFrameToPages(frame, 8, dst, gfns, { key: macKey, out: dstMacs });
    expect(Buffer.from(dst.subarray(0, 4096)).equals(Buffer.from(memory.subarray(0, 4096)))).toBe(true);
    expect(Buffer.from(dstMacs).equals(Buffer.from(macs))).toBe(true);
    expect(Buffer.from(macs.subarray(0, 16)).equals(gmac(macKey, 4 * 4096, memory.subarray(4 * 4096)))).toBe(
      true,
    );
  });

  it('byGfn writes each MAC into a per-guest table at its gfn, matching viewMacs of the whole guest', () => {
    const srcKey = newMemoryKey();
    const dstKey = newMemoryKey();
    const gcmKey = new Uint8Array(randomBytes(32));
    const { memory, cbits } = guest(6, srcKey);
    const sealedGfns = new Float64Array([5, 1, 3]); // the private pages
    const rawGfns = new Float64Array([4, 0, 2]); // the shared ones
    const table = new Uint8Array(6 * 16);
    const frame = new Uint8Array(3 * SEALED_PAGE_BYTES);
    sealPagesToFrame(srcKey, gcmKey, memory, sealedGfns, 0, frame, 0, {
      key: macKey,
      out: table,
      byGfn: true,
    });
    const raw = new Uint8Array(3 * 4096);
    copyPagesToFrame(memory, rawGfns, raw, 0, { key: macKey, out: table, byGfn: true });
    expect(Buffer.from(table).equals(Buffer.from(viewMacs(srcKey, macKey, memory, cbits.words, 0, 6)))).toBe(
      true,
    );
    // The destination fills its own table while receiving: equal to the source's.
    const dst = new Uint8Array(6 * 4096);
    const dstTable = new Uint8Array(6 * 16);
    expect(
      openFrameToPages(gcmKey, dstKey, frame, 0, sealedGfns, 0, dst, {
        key: macKey,
        out: dstTable,
        byGfn: true,
      }),
    ).toBe(-1);
    copyFrameToPages(raw, 0, dst, rawGfns, { key: macKey, out: dstTable, byGfn: true });
    expect(Buffer.from(dstTable).equals(Buffer.from(table))).toBe(true);
    // A table too small for the guest is refused.
    expect(() =>
      copyPagesToFrame(memory, rawGfns, raw, 0, { key: macKey, out: new Uint8Array(5 * 16), byGfn: true }),
    ).toThrow(/byGfn/);
  });

  it('a frame too small for the batch at that offset is bad input, and nothing is written', () => {
    const memory = new Uint8Array(2 * 4096);
    const frame = new Uint8Array(4096 + 10);
    expect(() => copyPagesToFrame(memory, new Float64Array([0]), frame, 11)).toThrow(InvalidArgumentError);
    expect(() => copyPagesToFrame(memory, new Float64Array([0]), frame, 11)).toThrow(/offset 11/);
    expect(() =>
      sealPagesToFrame(newMemoryKey(), new Uint8Array(32), memory, new Float64Array([0]), 0, frame, 0),
    ).toThrow(/frame holds 4106 bytes/);
    // The native layer checks too (a caller past the TypeScript wrapper).
    expect(() => nativeAddon().copyPagesToFrame(memory, new Float64Array([0]), frame, 2 ** 53 - 1)).toThrow(
      RangeError,
    );
    expect(frame.every((b) => b === 0)).toBe(true);
  });
});
