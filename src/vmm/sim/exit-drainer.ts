/**
 * The tracker end of the exit rings: drains every vCPU's ring into the
 * HypercallBackend (the c-bit store in this process, or `sevtrack serve`),
 * whenever a vCPU rings the doorbell (its ring is half full, or full and the
 * vCPU waits), at least every DRAIN_INTERVAL_MS, and on demand: a sync, an
 * MSR exit and a pause each drain first.
 *
 * Ordering: drains forward changes in ticket order and one after another;
 * a drain's slots go back to the vCPUs only once the backend holds its
 * changes (exit-rings.ts), so a backend that fails (a killed service) leaves
 * them in the rings, and the pool reports the failure.
 */
import type { HypercallBackend } from '../hypercall-backend.js';
import type { RingConsumer } from './exit-rings.js';

/** The longest a published change waits for the tracker while the VMM thread is idle. */
export const DRAIN_INTERVAL_MS = 2;

type WaitAsync = (
  words: Int32Array,
  index: number,
  value: number,
  timeoutMs: number,
) => { async: boolean; value: Promise<string> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export class ExitDrainer {
  /** The previous drain still being forwarded (socket backends). */
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly loop: Promise<void>;
  /** Changes drained so far. */
  drained = 0;

  constructor(
    private readonly rings: RingConsumer,
    private readonly backend: HypercallBackend,
    private readonly vm: number,
    private readonly onError: (e: Error) => void,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const { words, index } = this.rings.doorbellWord;
    while (!this.stopped) {
      const w = waitAsync(words, index, this.rings.doorbell, DRAIN_INTERVAL_MS);
      if (w.async) await w.value;
      if (this.stopped) break;
      await this.drain().catch((e: Error) => this.onError(e));
      if (this.failure) break;
    }
  }

  /**
   * Takes every change whose hypercall has returned and hands it to the
   * backend; resolves once the backend holds them (and every earlier drain's).
   * For an in-process backend the changes are in the store when this
   * returns, before the promise settles.
   */
  drain(): Promise<void> {
    // A backend that failed once holds none of the changes after the failed
    // batch either: every later drain fails too, and nothing more is taken
    // or released, so no change is handed back to the vCPUs as held.
    if (this.failure) return Promise.reject(this.failure);
    const taken = this.rings.take();
    this.drained += taken.changes.length;
    if (taken.changes.length === 0) return this.chain;
    const held = this.backend.applyValidated(this.vm, taken.changes);
    if (held === undefined) {
      this.rings.release(taken.mark);
      return this.chain;
    }
    const done = Promise.all([this.chain, held]).then(
      () => {
        if (this.failure) throw this.failure;
        this.rings.release(taken.mark);
      },
      (err: Error) => {
        this.failure ??= err;
        throw this.failure;
      },
    );
    this.chain = done.catch(() => {});
    return done;
  }

  /** The first error a backend gave; once set, the drainer forwards nothing more. */
  private failure: Error | undefined;

  /**
   * Stops the periodic drains after one last drain of everything published.
   * `abandon` skips that last drain: the vCPUs were terminated and the guest
   * and its host are discarded, and a slot a killed vCPU claimed but never
   * published would hold the drain up.
   */
  async stop(options: { abandon?: boolean } = {}): Promise<void> {
    try {
      if (!options.abandon) await this.drain();
    } finally {
      this.stopped = true;
    }
    // Wake the loop: a pending Atomics.waitAsync does not keep the process alive.
    const { words, index } = this.rings.doorbellWord;
    Atomics.notify(words, index);
    await this.loop;
  }
}
