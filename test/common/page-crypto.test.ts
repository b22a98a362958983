import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  newMemoryKey,
  openPages,
  SEALED_PAGE_BYTES,
  sealPages,
  xtsDecryptPages,
  xtsEncryptPages,
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
