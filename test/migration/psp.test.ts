import { describe, expect, it } from 'vitest';
import { newMemoryKey, xtsEncryptPages } from '../../src/common/page-crypto.js';
import { PspSession } from '../../src/migration/psp.js';

function pair() {
  const srcKey = newMemoryKey();
  const dstKey = newMemoryKey();
  const src = new PspSession(srcKey);
  const dst = new PspSession(dstKey);
  src.sendStart(dst.publicKey);
  dst.receiveStart(src.publicKey);
  return { src, dst, srcKey, dstKey };
}

describe('PSP model', () => {
  it('moves encrypted pages from one VM key to another through an agreed transport key', () => {
    const { src, dst, srcKey, dstKey } = pair();
    const plain = new Uint8Array(3 * 4096).map((_, i) => i & 0xff);
    const srcMem = new Uint8Array(8 * 4096);
    const gfns = new Float64Array([1, 5, 7]);
    for (let i = 0; i < 3; i++)
      xtsEncryptPages(
        srcKey,
        plain.subarray(i * 4096, (i + 1) * 4096),
        srcMem.subarray(gfns[i] * 4096),
        gfns[i] * 4096,
        1,
      );
    const { firstSeq, sealed } = src.sendUpdateData(srcMem, gfns);
    const dstMem = new Uint8Array(8 * 4096);
    dst.receiveUpdateData(dstMem, gfns, firstSeq, sealed);
    // The destination holds the same plaintext under its own, different key.
    const expected = new Uint8Array(4096);
    xtsEncryptPages(dstKey, plain.subarray(4096, 8192), expected, 5 * 4096, 1);
    expect(Buffer.from(dstMem.subarray(5 * 4096, 6 * 4096)).equals(Buffer.from(expected))).toBe(true);
    expect(
      Buffer.from(dstMem.subarray(5 * 4096, 6 * 4096)).equals(
        Buffer.from(srcMem.subarray(5 * 4096, 6 * 4096)),
      ),
    ).toBe(false);
  });

  it('refuses pages out of sequence, tampered, or sealed for another session', () => {
    const { src, dst } = pair();
    const mem = new Uint8Array(4 * 4096);
    const a = src.sendUpdateData(mem, new Float64Array([0]));
    const b = src.sendUpdateData(mem, new Float64Array([1]));
    expect(() => dst.receiveUpdateData(mem, new Float64Array([1]), b.firstSeq, b.sealed)).toThrow(
      /expected sealed page sequence 0, got 1/,
    );
    const tampered = a.sealed.slice();
    tampered[7] ^= 1;
    expect(() => dst.receiveUpdateData(mem, new Float64Array([0]), a.firstSeq, tampered)).toThrow(
      /gfn 0 \(sequence 0\) failed authentication/,
    );
    // Replayed at another GPA: the associated data no longer matches.
    expect(() => dst.receiveUpdateData(mem, new Float64Array([2]), a.firstSeq, a.sealed)).toThrow(
      /failed authentication/,
    );
    const stranger = new PspSession(newMemoryKey());
    stranger.receiveStart(src.publicKey);
    expect(() => stranger.receiveUpdateData(mem, new Float64Array([0]), a.firstSeq, a.sealed)).toThrow(
      /failed authentication/,
    );
  });

  it('SEND_UPDATE_VMSA round-trips vCPU state; after FINISH nothing can be sealed or opened', () => {
    const { src, dst } = pair();
    const vmsa = new Uint8Array(2 * 4096).fill(0x5a);
    const ids = new Float64Array([0, 1]);
    const sealed = src.sendUpdateVmsa(vmsa.slice(), ids);
    expect(
      Buffer.from(dst.receiveUpdateVmsa(ids, sealed.firstSeq, sealed.sealed)).equals(Buffer.from(vmsa)),
    ).toBe(true);
    expect(src.finish()).toBe(2);
    expect(() => src.sendUpdateVmsa(vmsa, ids)).toThrow(/session is finished/);
  });

  it('needs START before any page, and sane limits', () => {
    const s = new PspSession(newMemoryKey());
    expect(() => s.sendUpdateData(new Uint8Array(4096), new Float64Array([0]))).toThrow(
      /SEND_START\/RECEIVE_START has not run/,
    );
    expect(() => new PspSession(newMemoryKey(), { rate: 0, batch: 0 })).toThrow(
      /--psp-batch 0 must be at least 1/,
    );
    expect(() => new PspSession(newMemoryKey(), { rate: -1, batch: 1 })).toThrow(/--psp-rate -1/);
  });
});
