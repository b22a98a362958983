/**
 * Sends a set of pages, each from the perspective the source believes:
 * encrypted pages through the PSP (SEND_UPDATE_DATA, sealed), shared pages
 * raw. Two pipelines run side by side so shared pages keep flowing while a
 * rate-limited PSP works (docs/design.md §4).
 */
import { PAGE_SIZE, type PageRange } from '../common/ranges.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { FrameChannel } from './channel.js';
import type { MigrationLog } from './migration-log.js';
import type { PspSession } from './psp.js';
import { encodePages, Msg } from './stream.js';

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
  const pending = { true: [] as number[], false: [] as number[] };
  for (const run of runs) {
    const end = run.gfn + run.npages;
    for (const r of perspective.ranges(run.gfn)) {
      if (r.gfn >= end) break;
      const from = Math.max(r.gfn, run.gfn);
      const to = Math.min(r.gfn + r.npages, end);
      const list = pending[`${r.encrypted}`];
      for (let g = from; g < to; g++) {
        list.push(g);
        if (list.length === batch) {
          yield { gfns: Float64Array.from(list), encrypted: r.encrypted };
          list.length = 0;
        }
      }
    }
  }
  for (const encrypted of [true, false]) {
    const list = pending[`${encrypted}`];
    if (list.length > 0) yield { gfns: Float64Array.from(list), encrypted };
  }
}

export class PageSender {
  constructor(
    private readonly memory: GuestMemory,
    private readonly psp: PspSession,
    private readonly channel: FrameChannel,
    private readonly batch: number,
    private readonly log?: MigrationLog,
  ) {}

  /**
   * Sends every page of `runs` from `perspective`; resolves when all frames
   * are handed to the channel. onFrame sees (pages sent, pages in all) after
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
    const progress = () => onFrame?.(stats.sealedPages + stats.rawPages, total);
    const pspLoop = async () => {
      for (const gfns of sealedQueue) {
        // The PSP takes `limits.batch` pages per firmware call.
        for (let i = 0; i < gfns.length; i += this.psp.limits.batch) {
          await this.psp.throttle(Math.min(this.psp.limits.batch, gfns.length - i));
        }
        const { firstSeq, sealed } = this.psp.sendUpdateData(this.memory.bytes, gfns);
        const frame = encodePages({ round, gfns, firstSeq, data: sealed });
        this.log?.send(round, true, gfns, firstSeq, 'send', perspective);
        const bytes = frame.length; // the channel may transfer (detach) the buffer
        await this.channel.send(Msg.PAGES_SEALED, frame);
        stats.sealedPages += gfns.length;
        progress();
        stats.bytes += bytes;
      }
    };
    const rawLoop = async () => {
      for (const gfns of rawQueue) {
        const data = new Uint8Array(gfns.length * PAGE_SIZE);
        for (let i = 0; i < gfns.length; i++) data.set(this.memory.hostView(gfns[i]), i * PAGE_SIZE);
        const frame = encodePages({ round, gfns, firstSeq: 0, data });
        this.log?.send(round, false, gfns, 0, 'send', perspective);
        const bytes = frame.length;
        await this.channel.send(Msg.PAGES_RAW, frame);
        stats.rawPages += gfns.length;
        progress();
        stats.bytes += bytes;
      }
    };
    await Promise.all([pspLoop(), rawLoop()]);
    return stats;
  }
}
