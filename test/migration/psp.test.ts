import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import {
  newMemoryKey,
  SEALED_PAGE_BYTES,
  viewMacs,
  xtsDecryptPages,
  xtsEncryptPages,
} from '../../src/common/page-crypto.js';
import { type PspClock, type PspLimits, PspSession, pspCallMs } from '../../src/migration/psp.js';

/** A virtual clock: sleeping advances it, so rate-limit tests never depend on wall time. */
class VirtualClock implements PspClock {
  t = 1000;
  now(): number {
    return this.t;
  }
  sleep(ms: number): Promise<void> {
    this.t += ms;
    return Promise.resolve();
  }
}

/** Sends n pages the way the page sender does: one throttle per firmware call; returns virtual ms. */
async function sendTime(limits: PspLimits, n: number, clock = new VirtualClock()): Promise<number> {
  const s = new PspSession(newMemoryKey(), limits, clock);
  const start = clock.now();
  for (let i = 0; i < n; i += limits.batch) await s.throttle(Math.min(limits.batch, n - i));
  return clock.now() - start;
}

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

describe('PSP rate model', () => {
  it('batch 1 runs at the rate; a larger batch amortizes the per-call cost and is faster', async () => {
    const one = await sendTime({ rate: 400, batch: 1 }, 1024);
    expect(one).toBeCloseTo(1024 * 2.5, 6); // 400 pages/s at one page per call
    const times = [];
    for (const batch of [1, 4, 16, 64, 256]) times.push(await sendTime({ rate: 400, batch }, 1024));
    for (let i = 1; i < times.length; i++) expect(times[i]).toBeLessThan(times[i - 1]);
    // 16 calls of 64 pages: 16 * (2 ms + 64 * 0.5 ms).
    expect(times[3]).toBeCloseTo(16 * pspCallMs({ rate: 400, batch: 64 }, 64), 6);
    expect(times[3]).toBeCloseTo(16 * (2 + 32), 6);
    // No batch beats the per-page cost: 1024 pages * 0.5 ms.
    expect(times[4]).toBeGreaterThan(1024 * 0.5);
  });

  it('a throttle of more pages than the batch is split into firmware calls', async () => {
    const clock = new VirtualClock();
    const s = new PspSession(newMemoryKey(), { rate: 400, batch: 8 }, clock);
    await s.throttle(20); // calls of 8, 8, 4
    expect(clock.t - 1000).toBeCloseTo(3 * 2 + 20 * 0.5, 6);
  });

  it('does not bank idle time: after an idle spell a burst still takes the firmware time', async () => {
    const clock = new VirtualClock();
    const s = new PspSession(newMemoryKey(), { rate: 400, batch: 1 }, clock);
    await s.throttle(1);
    clock.t += 10_000; // the PSP sits idle for 10 s
    const start = clock.now();
    for (let i = 0; i < 400; i++) await s.throttle(1);
    expect(clock.now() - start).toBeCloseTo(400 * 2.5, 6);
  });

  it('calls issued back to back queue behind the busy PSP', async () => {
    const clock = new VirtualClock();
    const s = new PspSession(newMemoryKey(), { rate: 100, batch: 1 }, clock);
    // Two callers ask at the same instant: the second waits for the first call too.
    const a = s.throttle(1);
    const b = s.throttle(1);
    await Promise.all([a, b]);
    expect(clock.t - 1000).toBeGreaterThanOrEqual(20);
  });

  it('unlimited sessions never wait, and callShare is checked', async () => {
    expect(await sendTime({ rate: 0, batch: 1 }, 100)).toBe(0);
    expect(() => new PspSession(newMemoryKey(), { rate: 400, batch: 1, callShare: 1 })).toThrow(
      /callShare 1 must be in \[0, 1\)/,
    );
  });
});

describe('PSP straight into frames', () => {
  it('sendUpdateDataInto / receiveUpdateDataFrom move pages through a frame at an offset, with view MACs', () => {
    const { src, dst, srcKey, dstKey } = pair();
    const plain = new Uint8Array(4 * 4096).map((_, i) => (i * 7) & 0xff);
    const srcMem = new Uint8Array(4 * 4096);
    xtsEncryptPages(srcKey, plain, srcMem, 0, 4);
    const gfns = new Float64Array([3, 1]);
    const frame = new Uint8Array(40 + 2 * SEALED_PAGE_BYTES);
    const macKey = src.viewMacKey();
    expect(Buffer.from(dst.viewMacKey()).equals(Buffer.from(macKey))).toBe(true);
    const srcMacs = new Uint8Array(32);
    const firstSeq = src.sendUpdateDataInto(srcMem, gfns, frame, 40, { key: macKey, out: srcMacs });
    expect(firstSeq).toBe(0);
    const dstMem = new Uint8Array(4 * 4096);
    const dstMacs = new Uint8Array(32);
    dst.receiveUpdateDataFrom(dstMem, gfns, firstSeq, frame, 40, { key: macKey, out: dstMacs });
    expect(Buffer.from(dstMacs).equals(Buffer.from(srcMacs))).toBe(true);
    const view = new Uint8Array(4 * 4096);
    xtsDecryptPages(dstKey, dstMem, view, 0, 4);
    expect(Buffer.from(view.subarray(3 * 4096)).equals(Buffer.from(plain.subarray(3 * 4096)))).toBe(true);
    // The MACs are those of the guest view.
    const cbits = new PageBitmap(64);
    cbits.setRange(0, 4);
    const want = viewMacs(dstKey, macKey, dstMem, cbits.words, 3, 1);
    expect(Buffer.from(dstMacs.subarray(0, 16)).equals(Buffer.from(want))).toBe(true);
    // Out of sequence: refused before anything is written.
    const again = new Uint8Array(4 * 4096);
    expect(() => dst.receiveUpdateDataFrom(again, gfns, 0, frame, 40)).toThrow(
      /expected sealed page sequence 2/,
    );
    expect(again.every((b) => b === 0)).toBe(true);
  });

  it('a tampered frame page fails authentication with the gfn named', () => {
    const { src, dst } = pair();
    const mem = new Uint8Array(2 * 4096);
    const frame = new Uint8Array(2 * SEALED_PAGE_BYTES);
    src.sendUpdateDataInto(mem, new Float64Array([0, 1]), frame, 0);
    frame[SEALED_PAGE_BYTES + 3] ^= 0x80;
    expect(() => dst.receiveUpdateDataFrom(mem, new Float64Array([0, 1]), 0, frame, 0)).toThrow(
      /gfn 1 \(sequence 1\) failed authentication/,
    );
  });

  it('the view MAC key differs between sessions and is gone after FINISH', () => {
    const a = pair();
    const b = pair();
    expect(Buffer.from(a.src.viewMacKey()).equals(Buffer.from(b.src.viewMacKey()))).toBe(false);
    a.src.finish();
    expect(() => a.src.viewMacKey()).toThrow(/session is finished/);
  });
});
