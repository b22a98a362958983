/**
 * Waits that cannot hang: for a promise that should settle soon (a peer's
 * last word, a thread asked to end) but might never, when the caller goes on
 * either way and only wants its failure if there is one in time; and a sleep
 * and a wait that a cancel cuts short.
 */
import { setTimeout as delay } from 'node:timers/promises';

/**
 * Waits for `p` to settle, at most `ms`: resolves with its rejection reason
 * if it rejected in time, undefined if it fulfilled or the time ran out. The
 * timer is cleared as soon as `p` settles.
 */
export async function rejectionWithin(p: Promise<unknown>, ms: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p.then(
        () => undefined,
        (e: unknown) => e,
      ),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Sleeps `ms`; once `signal` is aborted (before or during), rejects at once
 * with its reason (not Node's AbortError), so a cancelled run says why.
 */
export async function sleepUnlessAborted(ms: number, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  await delay(ms, undefined, { signal }).catch((err: unknown) => {
    signal?.throwIfAborted();
    throw err;
  });
}

/**
 * `p`, or its signal's reason once `signal` is aborted (before or while `p`
 * is pending), whichever comes first; the abort listener goes when `p` settles.
 */
export async function untilAborted<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  signal.throwIfAborted();
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
}
