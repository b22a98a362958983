/**
 * The generation and its watchers: the semantics of the sysgenid kernel
 * proposal (docs/sysgenid.md, "Semantics"), with no I/O. The service maps one
 * connection to one Watcher, as the kernel mapped one open file.
 *
 * Rules enforced here:
 * - the generation is a u32 that starts where the counter file stood and
 *   only grows; bump sets it to max(min, current + 1) and fails EOVERFLOW
 *   rather than wrap;
 * - a watcher starts up to date and untracked; a watcher is outdated while
 *   its generation differs from the current one, tracked or not;
 * - `outdated` counts tracked outdated watchers only: tracking an outdated
 *   watcher adds it, untracking or removing an outdated one takes it away,
 *   acknowledging takes it away;
 * - a blocking read waits while the watcher is up to date, and never
 *   acknowledges; a write acknowledges only with exactly the current value;
 * - wait-for-watchers returns when `outdated` is 0, fails EINTR when the
 *   caller is or becomes outdated (every bump makes every watcher outdated),
 *   ETIME at its timeout (0 = none).
 * Ordering rule: bump calls `publish` with the new value before it wakes any
 * reader or waiter, so whoever is woken and looks at the counter file sees
 * the new generation.
 */
import { sysgenidError } from './errors.js';
import { U32_MAX, type WatcherInfo } from './protocol.js';

export type Done<T> = (err: Error | undefined, value?: T) => void;

interface PendingWait {
  done: Done<void>;
  timer: NodeJS.Timeout | undefined;
}

export class Watcher {
  tracked = false;
  /** Whether `generation` was set by an acknowledgement rather than by opening. */
  acknowledged = false;
  name = '';
  readonly reads: Done<number>[] = [];
  readonly waits = new Set<PendingWait>();
  constructor(
    readonly id: number,
    public generation: number,
    readonly pid: number,
    readonly uid: number,
  ) {}
}

export class GenerationRegistry {
  private current: number;
  private outdatedTracked = 0;
  private nextId = 1;
  private readonly watchers = new Set<Watcher>();

  /** `publish` makes a new generation visible (the counter file) before anyone is woken. */
  constructor(
    initial: number,
    private readonly publish: (generation: number) => void,
  ) {
    this.current = initial;
  }

  get generation(): number {
    return this.current;
  }

  /** The number of tracked watchers that have not acknowledged the current generation. */
  get outdated(): number {
    return this.outdatedTracked;
  }

  get size(): number {
    return this.watchers.size;
  }

  /** A new watcher, up to date and untracked. */
  open(pid: number, uid: number): Watcher {
    const w = new Watcher(this.nextId++, this.current, pid, uid);
    this.watchers.add(w);
    return w;
  }

  /** Forgets w: its pending reads and waits are dropped unanswered (its peer is gone). */
  close(w: Watcher): void {
    if (!this.watchers.delete(w)) return;
    for (const wait of w.waits) clearTimeout(wait.timer);
    w.waits.clear();
    w.reads.length = 0;
    if (w.tracked && this.isOutdated(w)) this.dropOutdated();
  }

  isOutdated(w: Watcher): boolean {
    return w.generation !== this.current;
  }

  setTracking(w: Watcher, tracked: boolean): void {
    if (w.tracked === tracked) return;
    w.tracked = tracked;
    if (!this.isOutdated(w)) return;
    if (tracked) this.outdatedTracked++;
    else this.dropOutdated();
  }

  /** Answers with the generation now if w is outdated, EAGAIN if nonBlocking, else when a bump makes it outdated. */
  read(w: Watcher, nonBlocking: boolean, done: Done<number>): void {
    if (this.isOutdated(w)) done(undefined, this.current);
    else if (nonBlocking)
      done(
        sysgenidError('EAGAIN', `watcher is up to date with generation ${this.current}; nothing new to read`),
      );
    else w.reads.push(done);
  }

  /** Acknowledges the current generation. Throws ENOBUFS unless exactly 4 bytes, EINVAL unless the current value. */
  write(w: Watcher, bytes: Uint8Array): void {
    if (bytes.length !== 4) {
      throw sysgenidError(
        'ENOBUFS',
        `an acknowledgement is exactly 4 bytes (the little-endian generation), got ${bytes.length}`,
      );
    }
    const value = Buffer.from(bytes.buffer, bytes.byteOffset, 4).readUInt32LE(0);
    if (value !== this.current) {
      throw sysgenidError(
        'EINVAL',
        `acknowledged generation ${value} is not the current generation ${this.current}; read it and write that back`,
      );
    }
    if (w.generation === value) return;
    w.generation = value;
    w.acknowledged = true;
    if (w.tracked) this.dropOutdated();
  }

  /** Waits until no tracked watcher is outdated (timeoutMs 0 = no timeout); EINTR if w is or becomes outdated. */
  waitWatchers(w: Watcher, timeoutMs: number, done: Done<void>): void {
    if (this.isOutdated(w)) {
      done(this.interrupted(w));
      return;
    }
    if (this.outdatedTracked === 0) {
      done(undefined);
      return;
    }
    const wait: PendingWait = { done, timer: undefined };
    if (timeoutMs > 0) {
      // libuv's timers run on a loop clock cached at millisecond grain, so a
      // timer can fire a fraction of a millisecond before timeoutMs has really
      // passed; re-arm for the rest so the timeout is never cut short.
      const deadline = performance.now() + timeoutMs;
      const expire = (): void => {
        const left = deadline - performance.now();
        if (left > 0) {
          wait.timer = setTimeout(expire, Math.ceil(left));
          return;
        }
        w.waits.delete(wait);
        done(
          sysgenidError(
            'ETIME',
            `${this.outdatedTracked} tracked watcher(s) still outdated after ${timeoutMs} ms at generation ${this.current}`,
          ),
        );
      };
      wait.timer = setTimeout(expire, timeoutMs);
    }
    w.waits.add(wait);
  }

  /**
   * Sets the generation to max(min, current + 1), publishes it, marks every
   * watcher outdated and wakes readers (with the value) and waiters (EINTR).
   * Returns the new generation and how many tracked watchers it made outdated.
   */
  bump(min: number): { generation: number; madeOutdated: number } {
    if (this.current === U32_MAX) {
      throw sysgenidError('EOVERFLOW', `generation ${U32_MAX} is the largest u32; it cannot grow further`);
    }
    const next = Math.max(min, this.current + 1);
    const before = this.outdatedTracked;
    this.current = next;
    this.publish(next);
    let tracked = 0;
    for (const w of this.watchers) if (w.tracked) tracked++;
    this.outdatedTracked = tracked;
    for (const w of this.watchers) {
      for (const read of w.reads.splice(0)) read(undefined, next);
      for (const wait of w.waits) {
        clearTimeout(wait.timer);
        wait.done(this.interrupted(w));
      }
      w.waits.clear();
    }
    return { generation: next, madeOutdated: tracked - before };
  }

  /** One row per watcher, in the order they opened. */
  list(): WatcherInfo[] {
    return [...this.watchers].map((w) => ({
      id: w.id,
      pid: w.pid,
      uid: w.uid,
      name: w.name,
      tracked: w.tracked,
      outdated: this.isOutdated(w),
      generation: w.generation,
      acknowledged: w.acknowledged,
    }));
  }

  private interrupted(w: Watcher): Error {
    return sysgenidError(
      'EINTR',
      `this watcher is outdated (it knows generation ${w.generation}, current is ${this.current}); acknowledge the new generation, then wait again`,
    );
  }

  /** One tracked outdated watcher fewer; at zero every waiter returns. */
  private dropOutdated(): void {
    this.outdatedTracked--;
    if (this.outdatedTracked !== 0) return;
    for (const w of this.watchers) {
      for (const wait of w.waits) {
        clearTimeout(wait.timer);
        wait.done(undefined);
      }
      w.waits.clear();
    }
  }
}
