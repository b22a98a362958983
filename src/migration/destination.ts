/**
 * MigrationDestination: receives pages (opening sealed ones through the PSP
 * model with its own VM key, under its backend's memory model), the host
 * c-bit state, migration control and vCPU state; hands the vCPU state to the
 * guest's memory (MigratableMemory.restoreVcpuState: sim refills its TLB from
 * the c-bit table at the page-table root the state names; kvm loads the
 * saved vCPU state into its paused VM and reads the table at its fixed
 * place); then checks
 * its own tracker (destination-tracker.ts: the perspective each page
 * arrived with against the final state, the final state against the guest's
 * table), verifies that every page's guest view equals the source's at
 * pause (by digest), and only then resumes the guest with a bumped
 * generation (docs/design.md §3 rule 6). On any failure the partial guest
 * and its tracker state are discarded.
 */
import { rejectionWithin } from '../common/bounded-wait.js';
import { GuestMismatchError, PeerError, RuntimeFailure } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import { copyFrameToPages, VIEW_MAC_BYTES } from '../common/page-crypto.js';
import { PageStateMap } from '../host/page-state-map.js';
import type { MigratableMemory } from '../vmm/backend.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { FrameChannel } from './channel.js';
import type { DestinationTracker, TrackerCheck } from './destination-tracker.js';
import type { MigrationLog } from './migration-log.js';
import { type PspLimits, PspSession, UNLIMITED_PSP } from './psp.js';
import {
  type Digests,
  decodeDigests,
  decodeHello,
  decodePages,
  decodePagesHeader,
  decodeText,
  decodeU32,
  decodeU64,
  encodeHelloAck,
  encodeResult,
  encodeRoundAck,
  encodeText,
  type Hello,
  Msg,
  type VerifyResult,
} from './stream.js';
import { ViewMacTable } from './view-macs.js';

/** `M`: the memory `allocate` returns (without `allocate`, a sim GuestMemory). */
export interface DestinationOptions<M extends MigratableMemory = GuestMemory> {
  channel: FrameChannel;
  peerTimeoutMs: number;
  /** How long to wait for the source's HELLO (default: peerTimeoutMs; 0 = no limit). */
  handshakeTimeoutMs?: number;
  psp?: PspLimits;
  log?: MigrationLog;
  /**
   * Allocates the destination guest (default: a sim guest; tests inject
   * failures here). A guest of another backend than the HELLO names is
   * refused (closed, HELLO_ACK with the reason).
   */
  allocate?: (npages: number, hello: Hello) => M;
  /** The lowest generation the resumed guest may have (sysgenid min). */
  minGeneration?: number;
  /** The destination's own tracker (a SQLite CbitStore); its VM is discarded if the guest does not resume. */
  tracker?: DestinationTracker;
  /**
   * Once aborted (an operator's cancel), the destination stops taking
   * frames and ends through its error path: the source is told the reason
   * (ABORT) and runs its guest on; the partial guest is discarded. Once the
   * source's digests are in it has no effect: the destination verifies, and
   * resumes the guest if it verified (the source has paused it for good).
   */
  signal?: AbortSignal;
}

export interface DestinationResult<M extends MigratableMemory = MigratableMemory> extends VerifyResult {
  hello: Hello;
  /** The guest to resume (undefined when a compared page differed: it was discarded, closed). */
  memory?: M;
  cbitState?: PageStateMap;
  migrationControl: bigint;
  pagesReceived: number;
  /** The migrated vCPU state (resumed guests only), already taken by `memory` (restoreVcpuState). */
  vcpuState?: Uint8Array;
}

/** What the destination has received so far (the partial guest until it is verified). */
interface Incoming<M extends MigratableMemory> {
  hello: Hello;
  memory: M;
  psp: PspSession;
  cbitState?: PageStateMap;
  migrationControl: bigint;
  vcpuState?: Uint8Array;
  /** The guest's own c-bit table, read from the migrated memory once the vCPU state is in. */
  guestTable?: PageBitmap;
  pagesReceived: number;
  /** The view MACs of the pages as they were opened or copied in (view-macs.ts). */
  macs: ViewMacTable;
  /** The destination's own view MACs of the guest under its page tables, once they are in. */
  ownDigests?: Uint8Array;
}

export class MigrationDestination<M extends MigratableMemory = GuestMemory> {
  constructor(private readonly o: DestinationOptions<M>) {}

  /**
   * Runs the destination: handshake, receive every round and the state,
   * verify, resume. Resolves with the verdict (the guest only when verified);
   * throws when the migration aborted, the partial guest discarded.
   */
  async run(): Promise<DestinationResult<M>> {
    const { signal, channel } = this.o;
    // One listener for the whole run, not a race per frame on the data path.
    const cancel = () => channel.stopReceiving(signal!.reason as Error);
    if (signal?.aborted) cancel();
    signal?.addEventListener('abort', cancel, { once: true });
    try {
      return await this.receiveAndResume();
    } finally {
      signal?.removeEventListener('abort', cancel);
    }
  }

  private async receiveAndResume(): Promise<DestinationResult<M>> {
    const inc = await this.handshake();
    try {
      const source = await this.receive(inc);
      return await this.verifyAndResume(inc, source);
    } catch (err) {
      // The partial guest is discarded: nothing returns it, so it goes with
      // this frame; so is the tracker's record of it. Tell the source why if
      // it is still there.
      this.o.tracker?.discard();
      inc.memory.close();
      this.o.log?.abort(this.o.log.lastRound, (err as Error).message);
      // A source that takes no frame does not hold the abort up.
      await rejectionWithin(this.o.channel.send(Msg.ABORT, encodeText((err as Error).message)), 1000);
      // Closing ends the source's wait for frames it lent us (their buffers never come back).
      this.o.channel.close();
      throw err;
    } finally {
      inc.psp.finish(); // RECEIVE_FINISH
      this.o.log?.commit();
    }
  }

  /** HELLO: allocates the guest and answers HELLO_ACK with this side's PSP key (RECEIVE_START). */
  private async handshake(): Promise<Incoming<M>> {
    const ch = this.o.channel;
    const handshakeMs = this.o.handshakeTimeoutMs ?? this.o.peerTimeoutMs;
    let hello: Hello;
    try {
      const first = await ch.next(
        handshakeMs,
        () =>
          new PeerError(
            `the source sent no handshake (HELLO) within ${handshakeMs} ms (--handshake-timeout)`,
          ),
      );
      if (first.type !== Msg.HELLO)
        throw new PeerError(`expected HELLO from the source, got message ${first.type}`);
      hello = decodeHello(first.payload);
    } catch (err) {
      await rejectionWithin(ch.send(Msg.ABORT, encodeText((err as Error).message)), 1000);
      throw err;
    }
    let memory: M;
    try {
      // Without allocate, M is GuestMemory (the default type argument).
      memory = (this.o.allocate ?? ((n) => GuestMemory.create(n) as MigratableMemory as M))(
        hello.npages,
        hello,
      );
    } catch (err) {
      // A destination set up for another guest (its flags are wrong) says so as it is.
      const misuse = err instanceof GuestMismatchError;
      const message = misuse
        ? `destination: ${err.message}`
        : `destination cannot allocate the guest (${hello.npages} pages): ${(err as Error).message}`;
      await ch.send(Msg.HELLO_ACK, encodeHelloAck(undefined, message)).catch(() => {});
      if (misuse) throw err;
      throw new RuntimeFailure('ERR_ALLOCATION', message, { cause: err }); // local, not the peer's fault
    }
    const backend = hello.backend ?? 'sim';
    if (memory.backend !== backend) {
      memory.close();
      const message = `the source migrates a ${backend} guest; this destination receives ${memory.backend} guests (run both sides with the same --backend)`;
      await ch.send(Msg.HELLO_ACK, encodeHelloAck(undefined, message)).catch(() => {});
      throw new PeerError(message);
    }
    // The destination guest's page tables arrive with its memory: start clear.
    memory.clearCbits();
    this.o.tracker?.begin(hello.npages);
    const psp = new PspSession(memory.codec, this.o.psp ?? UNLIMITED_PSP);
    psp.receiveStart(hello.publicKey);
    await ch.send(Msg.HELLO_ACK, encodeHelloAck(psp.publicKey));
    this.o.log?.start({ generation: hello.generation, migrationControl: 0 });
    const macs = new ViewMacTable(memory, psp.viewMacKey());
    return { hello, memory, psp, macs, migrationControl: 0n, pagesReceived: 0 };
  }

  /** Applies every message up to the source's DIGESTS, which it returns. */
  private async receive(inc: Incoming<M>): Promise<Digests> {
    for (;;) {
      const f = await this.o.channel.next(this.o.peerTimeoutMs);
      if (f.type === Msg.DIGESTS) return decodeDigests(f.payload, inc.memory.npages);
      if (f.type === Msg.PAGES_RAW || f.type === Msg.PAGES_SEALED) {
        this.applyPages(inc, f.type === Msg.PAGES_SEALED, f.payload);
      } else await this.apply(inc, f.type, f.payload);
    }
  }

  /**
   * One PAGES frame: opened or copied straight from the frame into guest
   * memory, the view MAC of each page in the same pass; the frame may be
   * lent (valid until the next next()), so nothing here keeps it. Kept out
   * of apply() and synchronous: it runs once per frame, so V8 optimizes it
   * during the migration, on a background thread that shares the two cores
   * with the data plane; a small function costs that thread far less than
   * apply()'s whole switch.
   */
  private applyPages(inc: Incoming<M>, sealed: boolean, payload: Buffer): void {
    const memory = inc.memory;
    const b = decodePagesHeader(payload, sealed);
    for (const g of b.gfns) {
      if (g >= memory.npages)
        throw new PeerError(
          `${sealed ? 'PAGES_SEALED' : 'PAGES_RAW'}: gfn ${g} is outside the guest (${memory.npages} pages)`,
        );
    }
    if (sealed)
      inc.psp.receiveUpdateDataFrom(memory.bytes, b.gfns, b.firstSeq, payload, b.dataOffset, inc.macs.output);
    else copyFrameToPages(payload, b.dataOffset, memory.bytes, b.gfns, inc.macs.output);
    inc.macs.noteMoved(b.gfns, sealed);
    this.o.log?.send(b.round, sealed, b.gfns, b.firstSeq, 'receive');
    this.o.tracker?.recordArrival(b.gfns, sealed);
    inc.pagesReceived += b.gfns.length;
  }

  /** One message of the pre-copy rounds or the final state, other than PAGES. */
  private async apply(inc: Incoming<M>, type: number, payload: Buffer): Promise<void> {
    const memory = inc.memory;
    switch (type) {
      case Msg.ROUND_END: {
        const round = decodeU32(payload, 'ROUND_END');
        // The view MACs are taken as pages arrive: always ready.
        await this.o.channel.send(Msg.ROUND_ACK, encodeRoundAck(round, true));
        this.o.tracker?.endRound();
        this.o.log?.roundEnd(round, { pagesReceived: inc.pagesReceived });
        return;
      }
      case Msg.CBIT_STATE:
        inc.cbitState = PageStateMap.deserialize(payload);
        if (inc.cbitState.npages !== memory.npages)
          throw new PeerError(`CBIT_STATE covers ${inc.cbitState.npages} pages, the guest ${memory.npages}`);
        return;
      case Msg.MIGRATION_CONTROL:
        inc.migrationControl = decodeU64(payload, 'MIGRATION_CONTROL');
        return;
      case Msg.VMSA: {
        const b = decodePages(payload, true);
        // Pages 0.. in order, the same number per vCPU (restoreVcpuState checks the count).
        const at = b.gfns.findIndex((id, i) => id !== i);
        if (at >= 0) throw new PeerError(`VMSA: page ${at} has id ${b.gfns[at]}, expected ${at}`);
        inc.vcpuState = inc.psp.receiveUpdateVmsa(b.gfns, b.firstSeq, b.data);
        this.loadPageTables(inc);
        return;
      }
      case Msg.ABORT:
        throw new PeerError(`the source aborted: ${decodeText(payload, 'ABORT')}`);
      default:
        throw new PeerError(`unexpected message ${type} from the source`);
    }
  }

  /**
   * The vCPU state is in, after every page: the guest's memory takes it and
   * reads the guest's own c-bit table from the migrated memory (nothing else
   * tells the destination the guest's c-bits). Then brings the view MACs
   * taken as pages arrived to the view under that table (rehashing only
   * pages that arrived from the other perspective).
   */
  private loadPageTables(inc: Incoming<M>): void {
    const memory = inc.memory;
    try {
      inc.guestTable = memory.restoreVcpuState(inc.vcpuState!, inc.hello.vcpus);
    } catch (err) {
      throw new PeerError(
        `the guest's vCPU state or c-bit table did not arrive intact: ${(err as Error).message}`,
        { cause: err },
      );
    }
    inc.ownDigests = inc.macs.finish(inc.guestTable).macs;
  }

  /**
   * Rule 6: compares the guest view with the source's digests and answers
   * RESULT; only a verified guest is returned (resumed with the new generation).
   */
  private async verifyAndResume(inc: Incoming<M>, source: Digests): Promise<DestinationResult<M>> {
    if (!inc.cbitState || inc.vcpuState === undefined)
      throw new PeerError('DIGESTS arrived before the c-bit state and vCPU state');
    if (!inc.ownDigests || !inc.guestTable) throw new PeerError('DIGESTS arrived before the vCPU state');
    const { hello, memory, cbitState, migrationControl, pagesReceived, vcpuState } = inc;
    const defined = new PageBitmap(memory.npages);
    defined.words.set(source.defined.subarray(0, defined.words.length));
    const tracker = this.o.tracker?.check(cbitState, defined, inc.guestTable) ?? {
      perspectiveMismatchGfns: [],
      trackerMismatchGfns: [],
    };
    const verdict = this.verify(memory.npages, inc.ownDigests, source, hello, tracker);
    const log = this.o.log;
    if (log) {
      log.cbitState(log.lastRound, 'final', cbitState.serialize(), cbitState);
      log.verification(log.lastRound, { ...verdict, mode: hello.verify });
      if (verdict.resumed) {
        log.resume(log.lastRound, 'destination');
        log.generation(log.lastRound, { before: hello.generation, after: verdict.generationAfter });
      }
    }
    if (verdict.resumed) this.o.tracker?.applyFinal(cbitState, migrationControl);
    else this.o.tracker?.discard();
    await this.o.channel.send(Msg.RESULT, encodeResult(verdict));
    if (!verdict.resumed) {
      memory.close();
      return { ...verdict, hello, migrationControl, pagesReceived };
    }
    return { ...verdict, hello, memory, cbitState, migrationControl, pagesReceived, vcpuState };
  }

  /**
   * Compares the destination guest's view of every page with the source's
   * digests: every page under `strict`; under `defined` only pages the guest
   * wrote after their last conversion (the others hold undefined content and
   * are counted as skipped, with the reason).
   */
  private verify(
    npages: number,
    mine: Uint8Array,
    source: { digests: Uint8Array; defined: Uint32Array },
    hello: Hello,
    tracker: TrackerCheck,
  ): VerifyResult {
    const defined = new PageBitmap(npages);
    defined.words.set(source.defined.subarray(0, defined.words.length));
    const a = Buffer.from(mine.buffer, mine.byteOffset, mine.byteLength);
    const b = Buffer.from(source.digests.buffer, source.digests.byteOffset, source.digests.byteLength);
    const mismatchedGfns: number[] = [];
    const all = hello.verify !== 'defined';
    let compared = all ? npages : defined.count();
    // Equal tables (the common case) need one memcmp; otherwise page by page.
    if (a.length !== b.length || !a.equals(b)) {
      compared = 0;
      for (let g = 0; g < npages; g++) {
        if (!all && !defined.test(g)) continue;
        compared++;
        const o = g * VIEW_MAC_BYTES;
        if (a.compare(b, o, o + VIEW_MAC_BYTES, o, o + VIEW_MAC_BYTES) !== 0) mismatchedGfns.push(g);
      }
    }
    const skipped = npages - compared;
    const skipReason =
      skipped === 0
        ? ''
        : 'content undefined: converted and not written since, or never written (--verify defined)';
    const protocolErrors = tracker.perspectiveMismatchGfns.length + tracker.trackerMismatchGfns.length;
    const resumed = mismatchedGfns.length === 0 && protocolErrors === 0;
    const verified = resumed && compared > 0;
    const generationAfter = resumed
      ? Math.max(this.o.minGeneration ?? 0, hello.generation + 1)
      : hello.generation;
    const skippedText = skipped === 0 ? '' : `, ${skipped} skipped (${skipReason})`;
    let message: string;
    if (protocolErrors > 0) {
      const parts: string[] = [];
      const list = (gfns: number[]) => `${gfns.slice(0, 16).join(', ')}${gfns.length > 16 ? ', ...' : ''}`;
      if (tracker.perspectiveMismatchGfns.length > 0)
        parts.push(
          `${tracker.perspectiveMismatchGfns.length} pages written after their last conversion arrived from another perspective than the final c-bit state (gfns ${list(tracker.perspectiveMismatchGfns)})`,
        );
      if (tracker.trackerMismatchGfns.length > 0)
        parts.push(
          `the final c-bit state differs from the guest's own table on ${tracker.trackerMismatchGfns.length} pages (gfns ${list(tracker.trackerMismatchGfns)})`,
        );
      message = `protocol error, not resumed: ${parts.join('; ')}; ${mismatchedGfns.length} of ${compared} compared pages differ from the source's view at pause (${hello.verify})${skippedText}`;
    } else if (!resumed) {
      const shown = mismatchedGfns.slice(0, 16).join(', ');
      message = `${mismatchedGfns.length} of ${compared} compared pages differ from the source's view at pause (${hello.verify})${skippedText}; gfns ${shown}${mismatchedGfns.length > 16 ? ', ...' : ''}`;
    } else if (!verified) {
      message = `nothing compared: all ${npages} pages skipped (${skipReason}); use --verify strict to compare every page`;
    } else {
      message = `${compared} pages compared, all equal to the source's view at pause (${hello.verify})${skippedText}`;
    }
    return {
      resumed,
      verified,
      comparedPages: compared,
      skippedPages: skipped,
      skipReason,
      mismatchedPages: mismatchedGfns.length,
      mismatchedGfns,
      ...tracker,
      generationAfter,
      message,
    };
  }
}
