/**
 * MigrationSource: pre-copy rounds, pause, final round with the c-bit diff,
 * then the c-bit state, migration control, vCPU state and digests, and the
 * destination's verdict (docs/design.md §3 rules 1-6). It runs on the
 * migration thread, concurrently with the guest's vCPU threads, which
 * handle their own exits meanwhile (src/vmm/sim/vcpu-exit.ts); a sync drains
 * their rings first (round-reads.ts).
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
import { rejectionWithin } from '../common/bounded-wait.js';
import { InvariantError, MisuseError, PeerError, RuntimeFailure } from '../common/errors.js';
import { KVM_MIGRATION_READY } from '../common/kvm-abi.js';
import { nativeAddon } from '../common/native.js';
import type { PageBitmap } from '../common/page-bitmap.js';
import { PAGE_SIZE, type PageRange, type StateRange } from '../common/ranges.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { ConversionTap, TrackedChange } from '../vmm/hypercall-backend.js';
import { Convergence, type Decision, NotConvergingError } from './convergence.js';
import { appendGfn, type MigrationLog } from './migration-log.js';
import { PageSender } from './page-sender.js';
import { PspSession } from './psp.js';
import { type RoundReadResult, RoundReads } from './round-reads.js';
import { ReferenceDigests } from './source-digests.js';
import {
  type DowntimePhases,
  MigrationRefusedError,
  type MigrationSummary,
  type SourceOptions,
} from './source-types.js';
import {
  decodeHelloAck,
  decodeResult,
  decodeRoundAck,
  decodeText,
  digestsPayload,
  encodeHello,
  encodePages,
  encodeText,
  encodeU32,
  encodeU64,
  Msg,
  type VerifyResult,
} from './stream.js';

export type { DowntimePhases, MigrationSummary, RoundProgress, SourceOptions } from './source-types.js';
export { describeDowntimePhases, MigrationRefusedError } from './source-types.js';

export class MigrationSource {
  private readonly psp: PspSession;
  private readonly sender: PageSender;
  private stats = { pagesSent: 0, sealedPages: 0, rawPages: 0, cbitRetransmits: 0, bytes: 0 };
  /** The current round (0 = bulk; the paused round is the last). */
  private round = 0;
  /**
   * Bytes per second of the link, measured over at least the DIGESTS
   * table's bytes: the bulk round's, then refreshed once the live rounds
   * since have together moved that much (so a link that slows is followed).
   * A round of a few pages measures its round trip, not the link: an idle
   * 1 GiB guest's one-page rounds gave 2-3 MB/s, priced its 4 MiB table at
   * 1.4-2 s and never converged.
   */
  private bandwidth = 0;
  /** Bytes and send time of the live rounds since the bandwidth was last set. */
  private unmeasured = { bytes: 0, ms: 0 };
  /** When the guest paused, then when each paused step ended (DowntimePhases' order). */
  private pausedMarks: number[] = [];
  private readonly convergence: Convergence;
  private decision: Decision | undefined;
  /** Whether the destination's reference digests had their first pass at the last ROUND_ACK. */
  private peerDigestsReady = false;
  /** The verification reference: view MACs taken as pages are sent (source-digests.ts). */
  private reference: ReferenceDigests | undefined;
  /** The DIGESTS payload the reference's MACs live in (sent at pause without a copy). */
  private digestsFrame: ReturnType<typeof digestsPayload> | undefined;
  /** The state of round 0's sync (naive uses it for every page). */
  private initialState: PageStateMap | undefined;
  /** The state of the last live sync (no-final-diff sends the paused round with it). */
  private lastLive: PageStateMap | undefined;

  private readonly reads: RoundReads;

  constructor(private readonly o: SourceOptions) {
    this.reads = new RoundReads(o.guest, o.store, o.vm, o.protocol, o.readCostNsPerPage, o.log);
    this.convergence = new Convergence(o.maxDowntimeMs, o.maxRounds, o.onNoConvergence === 'pause');
    this.psp = new PspSession(o.guest.memory.codec, o.psp);
    this.sender = new PageSender(o.guest.memory, this.psp, o.channel, o.batchPages, o.log, o.signal);
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
    const ack = decodeRoundAck(await this.expect(Msg.ROUND_ACK));
    this.peerDigestsReady = ack.digestsReady;
    const acked = ack.round;
    if (acked !== round)
      throw new PeerError(`the destination acknowledged round ${acked}, expected ${round}`);
    this.o.log?.roundEnd(round, { pagesSent: this.stats.pagesSent, bytes: this.stats.bytes });
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

  /** Adds the c-bit-changed frames to the send set (rule 3); returns how many were not dirty anyway. */
  private addChanged(round: number, toSend: PageBitmap, delta: readonly StateRange[]): number {
    let added = 0;
    const resent: PageRange[] = [];
    for (const d of delta) {
      added += d.npages - toSend.count(d.gfn, d.npages);
      if (this.o.log)
        for (let g = d.gfn; g < d.gfn + d.npages; g++) if (!toSend.test(g)) appendGfn(resent, g);
      toSend.setRange(d.gfn, d.npages);
    }
    this.o.log?.resend(round, resent);
    return added;
  }

  /**
   * Hands every conversion from now on to the log. The tap goes in before
   * the tracker's snapshot is read and buffers meanwhile; the log's tap then
   * skips what the snapshot already holds (seq at most the snapshot's), so
   * no change is missed or counted twice however long the read takes.
   */
  private async tapConversions(log: MigrationLog): Promise<void> {
    const early: (readonly TrackedChange[])[] = [];
    let tap: ConversionTap = (changes) => early.push(changes);
    this.o.guest.tapConversions((changes) => tap(changes));
    const snap = await this.o.store.snapshot(this.o.vm);
    tap = log.conversionTap(snap.state, snap.seq);
    for (const changes of early) tap(changes);
  }

  /** Refuses a guest that has not said it reports every c-bit change (docs/design.md §2). */
  private async checkReady(): Promise<bigint> {
    const control = await this.o.store.migrationControl(this.o.vm);
    if ((control & KVM_MIGRATION_READY) === 0n && !this.o.forceUnsafe) {
      throw new MigrationRefusedError(
        `the guest has not set KVM_MIGRATION_READY in MSR_KVM_MIGRATION_CONTROL, so it may not report every c-bit change; refusing to migrate (--force-unsafe overrides)`,
      );
    }
    return control;
  }

  /**
   * Runs the migration: handshake, the bulk round, pre-copy rounds until the
   * downtime fits, pause, the final round, the state, and the verdict.
   * Resolves with the summary (verified or not); throws when the migration
   * aborted, the source guest running on untouched (rule 6).
   */
  async run(): Promise<MigrationSummary> {
    const t0 = performance.now();
    const control = await this.checkReady();
    const generationBefore = this.o.guest.generation;
    try {
      // Every conversion from here on, whatever the protocol consumes of it.
      if (this.o.log) await this.tapConversions(this.o.log);
      const cancelled = () => this.o.signal?.throwIfAborted();
      cancelled();
      await this.handshake(control, generationBefore);
      this.startReference();
      await this.bulkRound();
      for (;;) {
        cancelled();
        if (!(await this.another())) break;
        await this.precopyRound();
      }
      await this.pause();
      const final = await this.finalRound();
      await this.sendState(final.state);
      // The last point of return: once the digests are out, the destination may resume.
      cancelled();
      await this.sendDigests();
      this.markPaused(); // state
      return await this.verdict(t0, generationBefore);
    } catch (err) {
      throw await this.abort(err);
    } finally {
      this.psp.finish(); // SEND_FINISH: the transport key is gone, success or not
      this.o.guest.tapConversions(undefined);
      this.o.log?.commit();
    }
  }

  /** HELLO / HELLO_ACK, then SEND_START with the destination's key. */
  private async handshake(control: bigint, generation: number): Promise<void> {
    const npages = this.o.guest.memory.npages;
    await this.o.channel.send(
      Msg.HELLO,
      encodeHello({
        npages,
        vcpus: this.o.guest.vcpus,
        backend: this.o.guest.memory.backend,
        protocol: this.o.protocol,
        verify: this.o.verify,
        generation,
        publicKey: this.psp.publicKey,
      }),
    );
    const ack = decodeHelloAck(await this.expect(Msg.HELLO_ACK));
    if (ack.error) throw new PeerError(`the destination refused the migration: ${ack.error}`);
    this.psp.sendStart(ack.publicKey!);
    this.o.log?.start({ generation, migrationControl: Number(control) });
  }

  /**
   * Round 0: every page, from the perspective of the round's sync (taken
   * after the harvest; cbit-first reads the c-bit state first, as in every
   * round of that variant).
   */
  private async bulkRound(): Promise<void> {
    const npages = this.o.guest.memory.npages;
    const first = await this.readBoth(0);
    this.initialState = first.sync.state;
    this.lastLive = first.sync.state;
    this.o.log?.cbitState(0, 'initial', first.sync.state.serialize(), first.sync.state);
    await this.sendAndMeasure(0, [{ gfn: 0, npages }], first.sync.state, first.readsMs);
    this.o.guest.tick('after-send', 0);
  }

  /**
   * Sends a live round's pages and ends the round, recording what it
   * measured (the downtime estimate's rates).
   */
  private async sendAndMeasure(
    round: number,
    runs: Iterable<PageRange>,
    perspective: PageStateMap,
    readsMs: number,
  ): Promise<void> {
    const start = performance.now();
    const bytesBefore = this.stats.bytes;
    const pages = await this.sendPages(round, runs, perspective);
    const ackStart = performance.now();
    await this.endRound(round);
    const end = performance.now();
    this.convergence.recordRound({
      readsMs,
      pagesSent: pages,
      sendMs: end - start,
      roundTripMs: end - ackStart,
      roundMs: end - start + readsMs,
    });
    const table = this.digestsFrame?.payload.byteLength ?? 0;
    if (pages > 0) {
      // The sends' own time: the ROUND_END / ROUND_ACK trip is latency, not transfer.
      this.unmeasured.bytes += this.stats.bytes - bytesBefore;
      this.unmeasured.ms += ackStart - start;
      if (this.unmeasured.bytes >= table || this.bandwidth === 0) {
        this.bandwidth = this.unmeasured.bytes / Math.max(1e-3, this.unmeasured.ms / 1000);
        this.unmeasured = { bytes: 0, ms: 0 };
      }
    }
    if (this.bandwidth > 0) this.convergence.digestsMs = (table / this.bandwidth) * 1000;
  }

  /**
   * After SEND_START: the reference's view MACs are taken, under the key
   * both sides derive, as every page is sent (source-digests.ts); every
   * harvest marks the pages written since stale.
   */
  private startReference(): void {
    const memory = this.o.guest.memory;
    this.digestsFrame = digestsPayload(memory.npages, memory.written.words.length);
    // Every MAC is written in the bulk round: on huge pages (its 2 MiB-aligned
    // interior; it stays an ArrayBuffer so DIGESTS is transferred, not
    // copied), that is a few faults per GiB, not 1,024.
    nativeAddon().adviseHugePages(this.digestsFrame.payload);
    const reference = new ReferenceDigests(memory, this.psp.viewMacKey(), this.digestsFrame.digests);
    this.reference = reference;
    this.sender.macs = reference.table;
    this.reads.onHarvest = (d) => reference.noteWritten(d);
  }

  /** The round's two reads (round-reads.ts), and the cost of sending the state they return. */
  private async readBoth(round: number): Promise<RoundReadResult> {
    const r = await this.reads.both(round);
    const s0 = performance.now();
    r.sync.state.serialize();
    this.convergence.stateMs = performance.now() - s0;
    return r;
  }

  /**
   * Whether to run another live round (convergence.ts). The reference needs
   * no work between rounds: every page it holds stale (written or converted
   * since its send) is in the next round's dirty set or c-bit delta, and
   * sending it takes its MAC again. When the target is not met: abort
   * (default; the guest runs on), or pause anyway and say so.
   */
  private async another(): Promise<boolean> {
    const { guest, store, vm } = this.o;
    const pagesLeft = async () => {
      const info = await store.info(vm);
      return guest.memory.dirtyCount() + Math.max(0, info.lastSeq - info.lastSyncSeq);
    };
    let d = this.convergence.decide(this.round, await pagesLeft());
    if (!d.another) {
      // About to pause: what the guest dirtied since the decision counts too.
      const estimatedDowntimeMs = this.convergence.estimate(await pagesLeft());
      const converged = this.convergence.convergedWith(estimatedDowntimeMs);
      const roundsLeft = this.round + 1 < this.o.maxRounds;
      // The destination must not hash the whole guest while paused either:
      // while its first pass runs, another live round keeps the dirty set small.
      const wait = d.converged && (!converged || !this.peerDigestsReady);
      d = { ...d, estimatedDowntimeMs, converged, another: wait && roundsLeft };
    }
    this.decision = d;
    this.o.onRound?.({
      round: this.round,
      paused: false,
      pagesSent: this.stats.pagesSent,
      cbitRetransmits: this.stats.cbitRetransmits,
      dirtyLeft: guest.memory.dirtyCount(),
      expectedDowntimeMs: d.estimatedDowntimeMs,
      bandwidthMBps: this.bandwidth / 1e6,
    });
    if (d.another) return true;
    if (!d.converged) {
      const message = Convergence.explain(d, this.round + 1, this.o.maxDowntimeMs);
      this.o.log?.notConverging(this.round, { ...d, message });
      if ((this.o.onNoConvergence ?? 'abort') === 'abort') throw new NotConvergingError(message);
    }
    return false;
  }

  /**
   * One live round (docs/design.md §3 rules 2-3): harvest, THEN sync (cbit-first
   * swaps them), add the c-bit-changed pages (safe, no-final-diff), send.
   */
  private async precopyRound(): Promise<void> {
    const { guest, protocol } = this.o;
    const round = ++this.round;
    guest.tick('round-start', round);
    const { dirty: d, sync: s, readsMs } = await this.readBoth(round);
    if (protocol === 'safe' || protocol === 'no-final-diff')
      this.stats.cbitRetransmits += this.addChanged(round, d, s.delta);
    this.lastLive = s.state;
    await this.sendAndMeasure(round, d.runs(), protocol === 'naive' ? this.initialState! : s.state, readsMs);
    guest.tick('after-send', round);
  }

  /** Pauses the guest: from here its memory and page tables no longer change. */
  private async pause(): Promise<void> {
    await this.o.guest.pause();
    this.pausedMarks = [performance.now()];
    this.round++;
    const memory = this.o.guest.memory;
    this.o.log?.pause(
      this.round,
      {
        converged: this.decision?.converged ?? true,
        estimatedDowntimeMs: this.decision?.estimatedDowntimeMs ?? 0,
      },
      { guestCbits: memory.cbits.words, written: memory.written.words },
    );
  }

  /**
   * The paused round (rule 4): harvest and sync once more; the sync's delta
   * is the diff of the full state against the last sync, and every page in
   * it is resent (but for no-cbit-dirty). Returns the final state and dirty set.
   */
  private async finalRound(): Promise<{ state: PageStateMap; dirty: PageBitmap }> {
    const { protocol } = this.o;
    const round = this.round;
    let d: PageBitmap;
    let state: PageStateMap;
    if (protocol === 'no-final-diff' || protocol === 'naive') {
      d = this.reads.harvest(round);
      state = protocol === 'naive' ? this.initialState! : this.lastLive!;
    } else {
      const s1 = protocol === 'cbit-first' ? await this.reads.sync(round) : undefined;
      d = this.reads.harvest(round);
      const s = s1 ?? (await this.reads.sync(round));
      if (protocol !== 'no-cbit-dirty') {
        this.o.log?.finalDiff(round, { fromSeq: s.previousSeq, toSeq: s.seq, delta: s.delta });
        this.stats.cbitRetransmits += this.addChanged(round, d, s.delta);
      }
      state = s.state;
    }
    this.markPaused(); // reads
    await this.sendPages(round, d.runs(), state);
    await this.endRound(round);
    this.markPaused(); // pages
    this.o.onRound?.({
      round,
      paused: true,
      pagesSent: this.stats.pagesSent,
      cbitRetransmits: this.stats.cbitRetransmits,
      dirtyLeft: 0,
      expectedDowntimeMs: 0,
      bandwidthMBps: this.bandwidth / 1e6,
    });
    return { state, dirty: d };
  }

  /**
   * The host's c-bit state, migration control and vCPU state
   * (SEND_UPDATE_VMSA). The guest's own c-bit table is not sent: it is in
   * guest memory, which went over in the rounds; the vCPU state names its root.
   */
  private async sendState(finalState: PageStateMap): Promise<void> {
    const { guest, store, vm } = this.o;
    const stateBytes = finalState.serialize();
    this.o.log?.cbitState(this.round, 'final', stateBytes, finalState);
    await this.o.channel.send(Msg.CBIT_STATE, stateBytes);
    await this.o.channel.send(Msg.MIGRATION_CONTROL, encodeU64(await store.migrationControl(vm)));
    // The same whole number of pages per vCPU (one for sim, two for kvm),
    // numbered 0.. in order: page k of vCPU v is id v * (pages per vCPU) + k.
    const vmsa = guest.vcpuState();
    const vmsaIds = Float64Array.from({ length: vmsa.byteLength / PAGE_SIZE }, (_, i) => i);
    const sealedVmsa = this.psp.sendUpdateVmsa(vmsa, vmsaIds);
    await this.o.channel.send(
      Msg.VMSA,
      encodePages({
        round: this.round,
        gfns: vmsaIds,
        firstSeq: sealedVmsa.firstSeq,
        data: sealedVmsa.sealed,
      }),
    );
  }

  /** The reference digests of the view at pause, and which pages hold defined content. */
  private async sendDigests(): Promise<void> {
    // The final round's pages were MACed as they were sent, while paused;
    // the MACs already sit in the DIGESTS payload.
    this.reference!.finish();
    const frame = this.digestsFrame!;
    frame.defined.set(this.o.guest.memory.written.words);
    await this.o.channel.send(Msg.DIGESTS, frame.payload);
  }

  /**
   * The destination's verdict: verified, it resumed and the source guest
   * takes the new generation; not verified, the source guest carries on.
   */
  private async verdict(t0: number, generationBefore: number): Promise<MigrationSummary> {
    const { guest } = this.o;
    const result: VerifyResult = decodeResult(await this.expect(Msg.RESULT));
    this.markPaused(); // destination
    if (this.pausedMarks.length !== 5)
      throw new InvariantError(`${this.pausedMarks.length} paused-step marks, expected 5`);
    const [paused, reads, pages, state, destination] = this.pausedMarks;
    const downtimeMs = destination - paused;
    const downtimePhases: DowntimePhases = {
      readsMs: reads - paused,
      pagesMs: pages - reads,
      stateMs: state - pages,
      destinationMs: destination - state,
    };
    this.o.log?.verification(this.round, { ...result, mode: this.o.verify });
    this.o.log?.resume(this.round, result.resumed ? 'destination' : 'source');
    if (result.resumed)
      this.o.log?.generation(this.round, { before: generationBefore, after: result.generationAfter });
    if (!result.resumed) guest.resume();
    else guest.generation = result.generationAfter;
    const totalMs = performance.now() - t0;
    return {
      backend: guest.memory.backend,
      verified: result.verified,
      resumed: result.resumed,
      comparedPages: result.comparedPages,
      skippedPages: result.skippedPages,
      skipReason: result.skipReason,
      mismatchedPages: result.mismatchedPages,
      mismatchedGfns: result.mismatchedGfns,
      perspectiveMismatchGfns: result.perspectiveMismatchGfns,
      trackerMismatchGfns: result.trackerMismatchGfns,
      converged: this.decision?.converged ?? true,
      estimatedDowntimeMs: this.decision?.estimatedDowntimeMs ?? 0,
      rounds: this.round + 1,
      ...this.stats,
      throughputMBps: this.stats.bytes / 1e6 / (totalMs / 1000),
      downtimeMs,
      downtimePhases,
      totalMs,
      generationBefore,
      generationAfter: result.resumed ? result.generationAfter : generationBefore,
      protocol: this.o.protocol,
      verify: this.o.verify,
      message: result.message,
    };
  }

  private markPaused(): void {
    this.pausedMarks.push(performance.now());
  }

  /** Rule 6: the source guest runs on, unpaused, untouched; the peer is told why. Returns the error to throw. */
  private async abort(err: unknown): Promise<Error> {
    err = await this.peerReason(err);
    if (this.o.guest.paused) this.o.guest.resume();
    const reason = err instanceof Error ? err.message : String(err);
    this.o.log?.abort(this.round, reason);
    // Tell the peer if it still listens; a peer that takes no frame does not hold the abort up.
    await rejectionWithin(this.o.channel.send(Msg.ABORT, encodeText(reason)), 1000);
    if (err instanceof MisuseError || err instanceof RuntimeFailure) return err;
    return new RuntimeFailure('ERR_MIGRATION', `migration aborted: ${reason}`, { cause: err });
  }

  /**
   * A send that failed because the destination stopped taking frames or
   * closed: the destination's ABORT, queued before it closed, says why.
   */
  private async peerReason(err: unknown): Promise<unknown> {
    if (!(err instanceof PeerError)) return err;
    try {
      for (let i = 0; i < 4; i++) {
        const f = await this.o.channel.next(1);
        if (f.type === Msg.ABORT)
          return new PeerError(`the destination aborted: ${decodeText(f.payload, 'ABORT')}`);
      }
    } catch {}
    return err;
  }
}
