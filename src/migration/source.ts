/**
 * MigrationSource: pre-copy rounds, pause, final round with the c-bit diff,
 * then the c-bit state, migration control, vCPU state and digests, and the
 * destination's verdict (docs/design.md §3 rules 1-6).
 *
 * Round k (guest running), protocol `safe`:
 *   1. harvest and clear the dirty log, THEN 2. sync the c-bit state (rule 2),
 *   3. send dirty ∪ c-bit-changed pages (rule 3), each from the perspective of
 *      step 2's state.
 * Paused: once more 1-3; the sync's delta is exactly the diff of the full
 * state against the last sync, so every page whose c-bit differs is resent
 * (rule 4); then the full state goes over and the destination verifies.
 *
 * The other protocol variants exist to be shown unsafe (stream.ts PROTOCOLS).
 * Any failure before the destination's verdict leaves the source guest
 * running, unpaused, its memory and c-bit state untouched (rule 6).
 */
import { MisuseError, PeerError, RuntimeFailure } from '../common/errors.js';
import { KVM_MIGRATION_READY } from '../common/kvm-abi.js';
import { PageBitmap } from '../common/page-bitmap.js';
import { PAGE_SIZE, type PageRange, type StateRange } from '../common/ranges.js';
import type { CbitStore } from '../host/cbit-store.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { SourceGuest } from '../vmm/backend.js';
import type { FrameChannel } from './channel.js';
import type { MigrationLog } from './migration-log.js';
import { PageSender } from './page-sender.js';
import {
  guestViewDigests,
  PARALLEL_THRESHOLD,
  refreshDigests,
  warmDigestWorkers,
} from './parallel-digests.js';
import { type PspLimits, PspSession } from './psp.js';
import {
  decodeHelloAck,
  decodeResult,
  decodeText,
  encodeDigests,
  encodeHello,
  encodePages,
  encodeText,
  encodeU32,
  encodeU64,
  Msg,
  type Protocol,
  type VerifyMode,
  type VerifyResult,
} from './stream.js';

/** The guest has not said it reports every c-bit change: the migration does not start. */
export class MigrationRefusedError extends RuntimeFailure {
  constructor(message: string) {
    super('ERR_NOT_READY', message);
  }
}

export interface SourceOptions {
  guest: SourceGuest;
  store: CbitStore;
  vm: number;
  channel: FrameChannel;
  protocol: Protocol;
  verify: VerifyMode;
  psp: PspLimits;
  maxDowntimeMs: number;
  maxRounds: number;
  forceUnsafe: boolean;
  /** Pages per stream frame. */
  batchPages: number;
  peerTimeoutMs: number;
  log?: MigrationLog;
  onRound?: (p: RoundProgress) => void;
  /** Called after each frame of a round with the pages sent so far and the round's total. */
  onPages?: (round: number, sent: number, total: number) => void;
}

export interface RoundProgress {
  round: number;
  paused: boolean;
  pagesSent: number;
  cbitRetransmits: number;
  dirtyLeft: number;
  expectedDowntimeMs: number;
  bandwidthMBps: number;
}

export interface MigrationSummary {
  verified: boolean;
  mismatchedPages: number;
  firstMismatches: number[];
  rounds: number;
  pagesSent: number;
  sealedPages: number;
  rawPages: number;
  cbitRetransmits: number;
  bytes: number;
  throughputMBps: number;
  downtimeMs: number;
  totalMs: number;
  generationBefore: number;
  generationAfter: number;
  protocol: Protocol;
  verify: VerifyMode;
  message: string;
}

/**
 * Pause after this many consecutive rounds that did not shrink the dirty set
 * (unless --max-downtime 0 asks for every round up to --max-rounds).
 */
const STALLED_ROUNDS_LIMIT = 3;

/** Every gfn of a list of runs. */
function runsToGfns(runs: readonly PageRange[]): Float64Array {
  let n = 0;
  for (const r of runs) n += r.npages;
  const out = new Float64Array(n);
  let i = 0;
  for (const r of runs) for (let g = r.gfn; g < r.gfn + r.npages; g++) out[i++] = g;
  return out;
}

export class MigrationSource {
  private readonly psp: PspSession;
  private readonly sender: PageSender;
  private stats = { pagesSent: 0, sealedPages: 0, rawPages: 0, cbitRetransmits: 0, bytes: 0 };

  constructor(private readonly o: SourceOptions) {
    this.psp = new PspSession(o.guest.memory.key, o.psp);
    this.sender = new PageSender(o.guest.memory, this.psp, o.channel, o.batchPages, o.log);
  }

  private async expect(type: number): Promise<Buffer> {
    const f = await this.o.channel.next(this.o.peerTimeoutMs);
    if (f.type === Msg.ABORT)
      throw new PeerError(`the destination aborted: ${decodeText(f.payload, 'ABORT')}`);
    if (f.type !== type) throw new PeerError(`expected message ${type} from the destination, got ${f.type}`);
    return f.payload;
  }

  /**
   * Ends a round: the destination acknowledges once it has applied every
   * page of it, which both paces the stream and proves the peer is alive.
   */
  private async endRound(round: number): Promise<void> {
    await this.o.channel.send(Msg.ROUND_END, encodeU32(round));
    const acked = (await this.expect(Msg.ROUND_ACK)).readUInt32LE(0);
    if (acked !== round)
      throw new PeerError(`the destination acknowledged round ${acked}, expected ${round}`);
  }

  /** Harvests (and clears) the dirty log into a fresh bitmap. */
  private harvest(round: number): PageBitmap {
    const d = new PageBitmap(this.o.guest.memory.npages);
    const n = this.o.guest.memory.dirty.harvestInto(d);
    if (this.o.log) this.o.log.event('harvest', round, { pages: n }, runsToGfns(d.runs()));
    return d;
  }

  private sync(round: number) {
    const s = this.o.store.sync(this.o.vm);
    if (this.o.log) {
      this.o.log.event('sync', round, {
        seq: s.seq,
        previousSeq: s.previousSeq,
        changedRanges: s.delta.length,
      });
      this.o.log.changes(this.o.store.changes(this.o.vm, s.previousSeq, s.seq));
    }
    return s;
  }

  private async sendPages(
    round: number,
    runs: Iterable<PageRange>,
    perspective: PageStateMap,
  ): Promise<number> {
    const s = await this.sender.send(round, runs, perspective, (sent, total) =>
      this.o.onPages?.(round, sent, total),
    );
    this.stats.sealedPages += s.sealedPages;
    this.stats.rawPages += s.rawPages;
    this.stats.pagesSent += s.sealedPages + s.rawPages;
    this.stats.bytes += s.bytes;
    return s.sealedPages + s.rawPages;
  }

  /**
   * Hashes the guest's view of every page while it runs, and sends the c-bit
   * table the hashes used (taken first, so a conversion during the hashing
   * shows up as a difference at pause).
   */
  private async earlyDigests(): Promise<{ digests: Uint8Array; cbits: Uint32Array }> {
    const memory = this.o.guest.memory;
    const cbits = memory.cbits.words.slice();
    // The destination starts hashing with the same tables at the same time.
    await this.o.channel.send(Msg.PAGE_TABLES_PRELIM, new Uint8Array(cbits.buffer.slice(0)));
    const digests = await guestViewDigests(memory.key, memory.bytes, memory.cbits.words, memory.npages);
    return { digests, cbits };
  }

  /**
   * At pause: rehashes the pages the final harvest found dirty and those
   * whose c-bit differs from the early table. A page written while it was
   * being hashed is dirty (the bit is set after the write), so it is redone.
   */
  private finishDigests(early: { digests: Uint8Array; cbits: Uint32Array }, dirty: PageBitmap): Uint8Array {
    const memory = this.o.guest.memory;
    const changed = new PageBitmap(memory.npages);
    changed.words.set(early.cbits);
    changed.xor(memory.cbits).or(dirty);
    refreshDigests(early.digests, memory.key, memory.bytes, memory.cbits.words, changed);
    return early.digests;
  }

  /** Adds the c-bit-changed frames to the send set (rule 3); returns how many were not dirty anyway. */
  private addChanged(toSend: PageBitmap, delta: readonly StateRange[]): number {
    let added = 0;
    for (const d of delta) {
      added += d.npages - toSend.count(d.gfn, d.npages);
      toSend.setRange(d.gfn, d.npages);
    }
    return added;
  }

  async run(): Promise<MigrationSummary> {
    const { guest, protocol, store, vm } = this.o;
    const t0 = performance.now();
    const control = store.migrationControl(vm);
    if ((control & KVM_MIGRATION_READY) === 0n && !this.o.forceUnsafe) {
      throw new MigrationRefusedError(
        `the guest has not set KVM_MIGRATION_READY in MSR_KVM_MIGRATION_CONTROL, so it may not report every c-bit change; refusing to migrate (--force-unsafe overrides)`,
      );
    }
    const memory = guest.memory;
    const npages = memory.npages;
    warmDigestWorkers(npages);
    const generationBefore = guest.generation;
    let pausedAt = 0;
    try {
      await this.o.channel.send(
        Msg.HELLO,
        encodeHello({
          npages,
          vcpus: guest.vcpus,
          protocol,
          verify: this.o.verify,
          generation: generationBefore,
          publicKey: this.psp.publicKey,
        }),
      );
      const ack = decodeHelloAck(await this.expect(Msg.HELLO_ACK));
      if (ack.error) throw new PeerError(`the destination refused the migration: ${ack.error}`);
      this.psp.sendStart(ack.publicKey!);
      this.o.log?.event('start', 0, { npages, protocol, verify: this.o.verify, control: Number(control) });

      // Round 0: everything, from the perspective of a sync taken after the harvest.
      this.harvest(0);
      guest.tick('between-reads', 0);
      const first = this.sync(0);
      const initialState = first.state;
      let lastLive = first.state;
      this.o.log?.state('initial', initialState.serialize());
      let roundStart = performance.now();
      await this.sendPages(0, [{ gfn: 0, npages }], first.state);
      await this.endRound(0);
      guest.tick('after-send', 0);
      let bandwidth = this.stats.bytes / Math.max(1e-3, (performance.now() - roundStart) / 1000);
      let round = 0;
      // Rounds that did not shrink the dirty set by a tenth below its best:
      // the guest dirties pages as fast as they go out, and more rounds
      // would only delay the pause.
      let stalledRounds = 0;
      let bestDirty = Number.POSITIVE_INFINITY;
      for (;;) {
        const dirtyLeft = memory.dirty.count();
        if (dirtyLeft < bestDirty * 0.9) {
          bestDirty = dirtyLeft;
          stalledRounds = 0;
        } else {
          stalledRounds++;
        }
        const expectedDowntimeMs = ((dirtyLeft * PAGE_SIZE) / Math.max(1, bandwidth)) * 1000;
        this.o.onRound?.({
          round,
          paused: false,
          pagesSent: this.stats.pagesSent,
          cbitRetransmits: this.stats.cbitRetransmits,
          dirtyLeft,
          expectedDowntimeMs,
          bandwidthMBps: bandwidth / 1e6,
        });
        if (expectedDowntimeMs <= this.o.maxDowntimeMs || round + 1 >= this.o.maxRounds) break;
        if (stalledRounds >= STALLED_ROUNDS_LIMIT && this.o.maxDowntimeMs > 0) {
          this.o.log?.event('not-converging', round, { dirtyLeft, expectedDowntimeMs });
          break;
        }
        round++;
        roundStart = performance.now();
        const before = this.stats.bytes;
        guest.tick('round-start', round);
        let d: PageBitmap;
        let s: ReturnType<CbitStore['sync']>;
        if (protocol === 'cbit-first') {
          s = this.sync(round);
          guest.tick('between-reads', round);
          d = this.harvest(round);
        } else {
          d = this.harvest(round);
          guest.tick('between-reads', round);
          s = this.sync(round);
        }
        if (protocol === 'safe' || protocol === 'no-final-diff')
          this.stats.cbitRetransmits += this.addChanged(d, s.delta);
        lastLive = s.state;
        await this.sendPages(round, d.runs(), protocol === 'naive' ? initialState : s.state);
        await this.endRound(round);
        guest.tick('after-send', round);
        bandwidth =
          (this.stats.bytes - before) / Math.max(1e-3, (performance.now() - roundStart) / 1000) || bandwidth;
      }

      // Pause, then the final round (rule 4).
      // Digests of the view at pause, most of them taken before it: hash
      // every page now (the guest still runs), then at pause rehash only
      // what was written (the final harvest) or converted since. The
      // destination does the same with the page tables sent here.
      const early = npages >= PARALLEL_THRESHOLD ? await this.earlyDigests() : undefined;
      await guest.pause();
      pausedAt = performance.now();
      // Small guests: hash the whole view now, on other cores, during the final round.
      const sourceDigests = early
        ? undefined
        : guestViewDigests(memory.key, memory.bytes, memory.cbits.words, npages);
      sourceDigests?.catch(() => {});
      round++;
      this.o.log?.event('pause', round, {});
      let d: PageBitmap;
      let finalState: PageStateMap;
      if (protocol === 'no-final-diff' || protocol === 'naive') {
        d = this.harvest(round);
        finalState = protocol === 'naive' ? initialState : lastLive;
      } else {
        const cbitFirst = protocol === 'cbit-first';
        const s1 = cbitFirst ? this.sync(round) : undefined;
        d = this.harvest(round);
        const s = s1 ?? this.sync(round);
        if (protocol !== 'no-cbit-dirty') this.stats.cbitRetransmits += this.addChanged(d, s.delta);
        finalState = s.state;
      }
      await this.sendPages(round, d.runs(), finalState);
      await this.endRound(round);
      this.o.onRound?.({
        round,
        paused: true,
        pagesSent: this.stats.pagesSent,
        cbitRetransmits: this.stats.cbitRetransmits,
        dirtyLeft: 0,
        expectedDowntimeMs: 0,
        bandwidthMBps: bandwidth / 1e6,
      });

      // The guest's own page tables travel as guest memory; the host's c-bit
      // state, migration control and vCPU state follow.
      const words = memory.cbits.words;
      await this.o.channel.send(
        Msg.GUEST_PAGE_TABLES,
        new Uint8Array(words.buffer.slice(words.byteOffset, words.byteOffset + words.byteLength)),
      );
      const stateBytes = finalState.serialize();
      this.o.log?.state('final', stateBytes);
      this.o.log?.event('cbit-state', round, {
        ranges: finalState.rangeCount,
        encrypted: finalState.encryptedCount,
      });
      await this.o.channel.send(Msg.CBIT_STATE, stateBytes);
      await this.o.channel.send(Msg.MIGRATION_CONTROL, encodeU64(store.migrationControl(vm)));
      const vmsa = guest.vcpuState();
      const vmsaIds = Float64Array.from({ length: guest.vcpus }, (_, i) => i);
      const sealedVmsa = this.psp.sendUpdateVmsa(vmsa, vmsaIds);
      await this.o.channel.send(
        Msg.VMSA,
        encodePages({ round, gfns: vmsaIds, firstSeq: sealedVmsa.firstSeq, data: sealedVmsa.sealed }),
      );
      await this.o.channel.send(
        Msg.DIGESTS,
        encodeDigests({
          digests: early ? this.finishDigests(early, d) : await sourceDigests!,
          defined: memory.written.words,
        }),
      );
      const result: VerifyResult = decodeResult(await this.expect(Msg.RESULT));
      const downtimeMs = performance.now() - pausedAt;
      this.o.log?.event(result.verified ? 'resume' : 'verify-failed', round, { ...result });
      if (!result.verified) {
        // The destination did not resume: the source guest carries on.
        guest.resume();
      } else {
        guest.generation = result.generationAfter;
      }
      const totalMs = performance.now() - t0;
      return {
        verified: result.verified,
        mismatchedPages: result.mismatched,
        firstMismatches: result.firstMismatches,
        rounds: round + 1,
        ...this.stats,
        throughputMBps: this.stats.bytes / 1e6 / (totalMs / 1000),
        downtimeMs,
        totalMs,
        generationBefore,
        generationAfter: result.verified ? result.generationAfter : generationBefore,
        protocol,
        verify: this.o.verify,
        message: result.message,
      };
    } catch (err) {
      // Rule 6: the source guest runs on, unpaused, untouched.
      if (guest.paused) guest.resume();
      const reason = err instanceof Error ? err.message : String(err);
      this.o.log?.event('abort', 0, { reason });
      await this.o.channel.send(Msg.ABORT, encodeText(reason)).catch(() => {});
      if (err instanceof MisuseError || err instanceof RuntimeFailure) throw err;
      throw new RuntimeFailure('ERR_MIGRATION', `migration aborted: ${reason}`, { cause: err });
    } finally {
      this.psp.finish(); // SEND_FINISH: the transport key is gone, success or not
      this.o.log?.flush();
    }
  }
}
