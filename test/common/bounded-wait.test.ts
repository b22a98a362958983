import { describe, expect, it } from 'vitest';
import { rejectionWithin, sleepUnlessAborted, untilAborted } from '../../src/common/bounded-wait.js';

describe('rejectionWithin', () => {
  it('gives the reason of a promise that rejects in time, undefined for one that fulfils', async () => {
    const reason = new Error('the destination failed');
    expect(await rejectionWithin(Promise.reject(reason), 60_000)).toBe(reason);
    expect(await rejectionWithin(Promise.resolve(7), 60_000)).toBeUndefined();
  });

  it('gives undefined once the time runs out for a promise that never settles, and a late rejection is not unhandled', async () => {
    let fail!: (e: Error) => void;
    const never = new Promise<never>((_, reject) => {
      fail = reject;
    });
    expect(await rejectionWithin(never, 5)).toBeUndefined();
    fail(new Error('too late')); // handled by the wait's own reaction: no unhandled rejection
    await new Promise((r) => setImmediate(r));
  });
});

describe('sleepUnlessAborted', () => {
  it('sleeps its time when nothing cancels it', async () => {
    await expect(sleepUnlessAborted(1, new AbortController().signal)).resolves.toBeUndefined();
    await expect(sleepUnlessAborted(1)).resolves.toBeUndefined();
  });

  it("ends with the signal's own reason, not Node's AbortError, aborted before or during the sleep", async () => {
    const before = new AbortController();
    const reason = new Error('cancelled by SIGINT');
    before.abort(reason);
    await expect(sleepUnlessAborted(60_000, before.signal)).rejects.toBe(reason);
    const during = new AbortController();
    const sleeping = sleepUnlessAborted(60_000, during.signal);
    during.abort(reason);
    await expect(sleeping).rejects.toBe(reason);
  });
});

describe('untilAborted', () => {
  it("gives the promise's own outcome when nothing cancels it", async () => {
    const signal = new AbortController().signal;
    expect(await untilAborted(Promise.resolve(7), signal)).toBe(7);
    const failure = new Error('the destination failed');
    await expect(untilAborted(Promise.reject(failure), signal)).rejects.toBe(failure);
    expect(await untilAborted(Promise.resolve('no signal'))).toBe('no signal');
  });

  it("ends a wait that would never end with the signal's reason, aborted before or during it", async () => {
    const never = new Promise<never>(() => {});
    const reason = new Error('cancelled by SIGINT');
    const before = new AbortController();
    before.abort(reason);
    await expect(untilAborted(never, before.signal)).rejects.toBe(reason);
    const during = new AbortController();
    const waiting = untilAborted(never, during.signal);
    during.abort(reason);
    await expect(waiting).rejects.toBe(reason);
  });
});
