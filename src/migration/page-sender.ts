/**
 * Sends a set of pages, each from the perspective the source believes:
 * encrypted pages through the PSP (SEND_UPDATE_DATA, sealed), shared pages
 * raw. Two pipelines run side by side so shared pages keep flowing while a
 * rate-limited PSP works (docs/design.md §4), and the PSP's time for the
 * next batch starts while the current one is sealed and sent, so the
 * firmware is never left idle between calls.
 *
 * Pages are sealed or copied straight into the frame (no intermediate
 * buffer), with their view MACs written in the same pass (view-macs.ts).
 * Frames are lent to the channel and come back once the peer consumed them
 * (FrameChannel.sendLent): each pipeline cycles FRAMES_PER_PIPELINE
 * buffers, allocated and faulted in once, never zeroed again; waiting for a
 * free one is the backpressure that bounds the memory in flight.
 */
import { InvalidArgumentError } from '../common/errors.js';
import { copyPagesToFrame, type MacOutput } from '../common/page-crypto.js';
import { PAGE_SIZE, type PageRange } from '../common/ranges.js';
import { residentBuffer } from '../common/resident-buffer.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { MigratableMemory } from '../vmm/backend.js';
import type { FrameChannel } from './channel.js';
import type { MigrationLog } from './migration-log.js';
import type { PspSession } from './psp.js';
import { Msg, pagesFrameBytes, pagesHeaderBytes, writePagesHeader } from './stream.js';

/**
 * Frame buffers each pipeline (sealed, raw) cycles: one being filled, the
 * others in flight. On the in-process channels the credit window
 * (CHANNEL_WINDOW, also 8) bounds the frames in flight of both pipelines
 * together; over a socket each frame is copied into the socket's buffer and
 * its buffer comes back at once, so the socket's backpressure bounds them.
 * Eight, not three: the destination's thread stalls for 1-5 ms at times (a
 * V8 compile or another thread holding its core), and a sealed frame takes
 * about 1 ms per side, so three frames left the source waiting through most
 * stalls. Measured alternating in one process, 1 GiB all encrypted: 8
 * against 3 gave +8%, +24%, +11% and +11% pages/s (medians of 5-6 pairs
 * each) and fewer long waits on the destination; all shared (frames 4x
 * quicker) +6% and -9%, no effect beyond noise; 16 buffers with a window of
 * 16 frames, nothing over 8 and 8. Buffers are allocated as a
 * pipeline needs them, so an all-encrypted guest never allocates the raw
 * pipeline's.
 */
export const FRAMES_PER_PIPELINE = 8;

/** Where the sender records the view MAC of each page it moves (the source's reference). */
export interface MacRecorder {
  readonly output: MacOutput;
  noteMoved(gfns: Float64Array, encrypted: boolean): void;
}

export interface SendStats {
  sealedPages: number;
  rawPages: number;
  bytes: number;
}

/**
 * Splits page runs by the perspective map into (gfn list, encrypted) batches
 * of at most `batch` pages each, in ascending gfn order.
 */
export function* perspectiveBatches(
  runs: Iterable<PageRange>,
  perspective: PageStateMap,
  batch: number,
): Generator<{ gfns: Float64Array; encrypted: boolean }> {
  // One batch being filled per perspective, written in place (no array of
  // numbers copied into a Float64Array per batch).
  const pending = { true: new Float64Array(batch), false: new Float64Array(batch) };
  const filled = { true: 0, false: 0 };
  for (const run of runs) {
    const end = run.gfn + run.npages;
    for (const r of perspective.ranges(run.gfn)) {
      if (r.gfn >= end) break;
      const from = Math.max(r.gfn, run.gfn);
      const to = Math.min(r.gfn + r.npages, end);
      const key = `${r.encrypted}` as const;
      for (let g = from; g < to; ) {
        const list = pending[key];
        let n = filled[key];
        const take = Math.min(to - g, batch - n);
        for (let i = 0; i < take; i++) list[n++] = g++;
        filled[key] = n;
        if (n === batch) {
          yield { gfns: list, encrypted: r.encrypted };
          pending[key] = new Float64Array(batch);
          filled[key] = 0;
        }
      }
    }
  }
  for (const encrypted of [true, false]) {
    const key = `${encrypted}` as const;
    if (filled[key] > 0) yield { gfns: pending[key].slice(0, filled[key]), encrypted };
  }
}

/**
 * A pipeline's frame buffers: all `count` of them carved out of one resident
 * buffer on huge pages (resident-buffer.ts) when the pipeline first needs a
 * frame, then lent and returned. Allocated frame by frame with
 * `new Uint8Array`, the eight frames of a pool took ~2,000 first-touch
 * faults in every migration's bulk round.
 */
class FramePool {
  private readonly free: Uint8Array[] = [];
  private readonly waiters: { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }[] = [];
  private dead: Error | undefined;
  private allocated = false;

  constructor(
    private readonly bytes: number,
    private readonly count: number,
  ) {}

  /** A free buffer; waits (backpressure) while every buffer is in flight. */
  take(): Promise<Uint8Array> {
    if (this.dead) return Promise.reject(this.dead);
    if (!this.allocated) this.allocate();
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private allocate(): void {
    this.allocated = true;
    // Each frame starts on a page of its own, so its pages are its alone.
    const stride = Math.ceil(this.bytes / PAGE_SIZE) * PAGE_SIZE;
    const all = residentBuffer(stride * this.count);
    for (let i = this.count - 1; i >= 0; i--)
      this.free.push(all.subarray(i * stride, i * stride + this.bytes));
  }

  give(b: Uint8Array): void {
    const w = this.waiters.shift();
    if (w) w.resolve(b);
    else this.free.push(b);
  }

  /** A lent buffer will not come back (the channel died): every wait fails. */
  fail(e: Error): void {
    this.dead ??= e;
    for (const w of this.waiters.splice(0)) w.reject(this.dead);
  }
}

export class PageSender {
  /** The view MACs of every page sent are recorded here once set (after SEND_START). */
  macs: MacRecorder | undefined;
  private sealedFrames: FramePool | undefined;
  private rawFrames: FramePool | undefined;

  constructor(
    private readonly memory: MigratableMemory,
    private readonly psp: PspSession,
    private readonly channel: FrameChannel,
    private readonly batch: number,
    private readonly log?: MigrationLog,
    /** Once aborted, both send loops stop before their next frame (the reason is thrown). */
    private readonly signal?: AbortSignal,
  ) {
    if (!Number.isInteger(batch) || batch < 1) {
      throw new InvalidArgumentError(
        'batchPages',
        `batchPages ${batch} must be a whole number of pages, at least 1`,
      );
    }
  }

  private pools(): { sealed: FramePool; raw: FramePool } {
    this.sealedFrames ??= new FramePool(pagesFrameBytes(this.batch, true), FRAMES_PER_PIPELINE);
    this.rawFrames ??= new FramePool(pagesFrameBytes(this.batch, false), FRAMES_PER_PIPELINE);
    return { sealed: this.sealedFrames, raw: this.rawFrames };
  }

  /**
   * Sends every page of `runs` from `perspective`; resolves when every
   * frame has been consumed by the peer (or copied by the transport), so
   * all buffers are back. onFrame sees (pages sent, pages in all) after
   * each frame, for progress displays.
   */
  async send(
    round: number,
    runs: Iterable<PageRange>,
    perspective: PageStateMap,
    onFrame?: (sent: number, total: number) => void,
  ): Promise<SendStats> {
    const stats: SendStats = { sealedPages: 0, rawPages: 0, bytes: 0 };
    const sealedQueue: Float64Array[] = [];
    const rawQueue: Float64Array[] = [];
    let total = 0;
    for (const b of perspectiveBatches(runs, perspective, this.batch)) {
      (b.encrypted ? sealedQueue : rawQueue).push(b.gfns);
      total += b.gfns.length;
    }
    const pools = this.pools();
    const inFlight: Promise<void>[] = [];
    const progress = () => onFrame?.(stats.sealedPages + stats.rawPages, total);
    /** Lends a filled frame to the channel; its buffer returns to `pool` once consumed. */
    const lend = (pool: FramePool, type: number, frame: Uint8Array, length: number) => {
      const back = this.channel.sendLent(type, frame, length).then(
        (b) => pool.give(b),
        (e: Error) => {
          pool.fail(e);
          throw e;
        },
      );
      back.catch(() => {}); // awaited below; a failure also fails the pool's waiters
      inFlight.push(back);
    };
    const pspLoop = async () => {
      // The PSP takes `limits.batch` pages per firmware call; the firmware
      // time of batch i + 1 starts when batch i's ends, while i is sent.
      let ticket = sealedQueue.length > 0 ? this.psp.throttle(sealedQueue[0].length) : undefined;
      for (let i = 0; i < sealedQueue.length; i++) {
        this.signal?.throwIfAborted();
        const gfns = sealedQueue[i];
        await ticket;
        ticket = i + 1 < sealedQueue.length ? this.psp.throttle(sealedQueue[i + 1].length) : undefined;
        const frame = await pools.sealed.take();
        const bytes = this.fillSealed(frame, round, gfns, perspective);
        lend(pools.sealed, Msg.PAGES_SEALED, frame, bytes);
        stats.sealedPages += gfns.length;
        progress();
        stats.bytes += bytes;
      }
    };
    const rawLoop = async () => {
      for (const gfns of rawQueue) {
        this.signal?.throwIfAborted();
        const frame = await pools.raw.take();
        const bytes = this.fillRaw(frame, round, gfns, perspective);
        lend(pools.raw, Msg.PAGES_RAW, frame, bytes);
        stats.rawPages += gfns.length;
        progress();
        stats.bytes += bytes;
      }
    };
    await Promise.all([pspLoop(), rawLoop()]);
    await Promise.all(inFlight);
    return stats;
  }

  /*
   * The per-frame work of the two loops, kept out of them and synchronous:
   * it runs once per frame, so V8 optimizes it during the migration on a
   * background thread that shares the cores with the data plane, and a
   * small function costs that thread far less than a whole async loop.
   */

  /** Seals `gfns` (SEND_UPDATE_DATA) into `frame` behind its header; returns the frame's length. */
  private fillSealed(
    frame: Uint8Array,
    round: number,
    gfns: Float64Array,
    perspective: PageStateMap,
  ): number {
    const offset = pagesHeaderBytes(gfns.length);
    const firstSeq = this.psp.sendUpdateDataInto(this.memory.bytes, gfns, frame, offset, this.macs?.output);
    writePagesHeader(frame, round, gfns, firstSeq);
    this.macs?.noteMoved(gfns, true);
    this.log?.send(round, true, gfns, firstSeq, 'send', perspective);
    return pagesFrameBytes(gfns.length, true);
  }

  /** Copies `gfns` raw into `frame` behind its header; returns the frame's length. */
  private fillRaw(frame: Uint8Array, round: number, gfns: Float64Array, perspective: PageStateMap): number {
    const offset = writePagesHeader(frame, round, gfns, 0);
    copyPagesToFrame(this.memory.bytes, gfns, frame, offset, this.macs?.output);
    this.macs?.noteMoved(gfns, false);
    this.log?.send(round, false, gfns, 0, 'send', perspective);
    return pagesFrameBytes(gfns.length, false);
  }
}
