/**
 * MigrationDestination: receives pages (opening sealed ones through the PSP
 * model with its own VM key), the guest's page tables, the host c-bit state,
 * migration control and vCPU state; then verifies that every page's guest
 * view equals the source's at pause (by digest), and only then resumes the
 * guest with a bumped generation (docs/design.md §3 rule 6). On any failure the
 * partial guest is discarded.
 */
import { PeerError, RuntimeFailure } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import { DIGEST_BYTES } from '../common/page-crypto.js';
import { PAGE_SIZE } from '../common/ranges.js';
import { PageStateMap } from '../host/page-state-map.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { FrameChannel } from './channel.js';
import type { MigrationLog } from './migration-log.js';
import { guestViewDigests, refreshDigests, warmDigestWorkers } from './parallel-digests.js';
import { type PspLimits, PspSession, UNLIMITED_PSP } from './psp.js';
import {
  decodeDigests,
  decodeHello,
  decodePages,
  decodeText,
  decodeU64,
  encodeHelloAck,
  encodeResult,
  encodeText,
  type Hello,
  Msg,
  type VerifyResult,
} from './stream.js';

export interface DestinationOptions {
  channel: FrameChannel;
  peerTimeoutMs: number;
  /** How long to wait for the source's HELLO (default: peerTimeoutMs; 0 = no limit). */
  handshakeTimeoutMs?: number;
  psp?: PspLimits;
  log?: MigrationLog;
  /** Allocates the destination guest (tests inject failures here). */
  allocate?: (npages: number) => GuestMemory;
  /** The lowest generation the resumed guest may have (sysgenid min). */
  minGeneration?: number;
}

export interface DestinationResult extends VerifyResult {
  hello: Hello;
  /** The resumed guest (undefined when verification failed: it was discarded). */
  memory?: GuestMemory;
  cbitState?: PageStateMap;
  migrationControl: bigint;
  pagesReceived: number;
  vcpuState?: Uint8Array;
}

const MAX_LISTED_MISMATCHES = 16;

export class MigrationDestination {
  constructor(private readonly o: DestinationOptions) {}

  async run(): Promise<DestinationResult> {
    const ch = this.o.channel;
    const handshakeMs = this.o.handshakeTimeoutMs ?? this.o.peerTimeoutMs;
    const first = await ch.next(
      handshakeMs,
      () =>
        new PeerError(`the source sent no handshake (HELLO) within ${handshakeMs} ms (--handshake-timeout)`),
    );
    let hello: Hello;
    try {
      if (first.type !== Msg.HELLO)
        throw new PeerError(`expected HELLO from the source, got message ${first.type}`);
      hello = decodeHello(first.payload);
    } catch (err) {
      await ch.send(Msg.ABORT, encodeText((err as Error).message)).catch(() => {});
      throw err;
    }
    let memory: GuestMemory;
    try {
      memory = (this.o.allocate ?? ((n) => GuestMemory.create(n)))(hello.npages);
    } catch (err) {
      const message = `destination cannot allocate the guest (${hello.npages} pages): ${(err as Error).message}`;
      await ch.send(Msg.HELLO_ACK, encodeHelloAck(undefined, message)).catch(() => {});
      throw new RuntimeFailure('ERR_ALLOCATION', message, { cause: err }); // local, not the peer's fault
    }
    warmDigestWorkers(hello.npages);
    // The destination guest's page tables arrive with its memory: start clear.
    memory.cbits.clearRange(0, memory.npages);
    const psp = new PspSession(memory.key, this.o.psp ?? UNLIMITED_PSP);
    psp.receiveStart(hello.publicKey);
    await ch.send(Msg.HELLO_ACK, encodeHelloAck(psp.publicKey));
    this.o.log?.event('start', 0, { npages: hello.npages, protocol: hello.protocol, verify: hello.verify });

    let cbitState: PageStateMap | undefined;
    let migrationControl = 0n;
    let vcpuState: Uint8Array | undefined;
    let pagesReceived = 0;
    let ownDigests: Promise<Uint8Array> | undefined;
    let early: EarlyDigests | undefined;
    try {
      for (;;) {
        const f = await ch.next(this.o.peerTimeoutMs);
        switch (f.type) {
          case Msg.PAGES_SEALED: {
            const b = decodePages(f.payload, true);
            psp.receiveUpdateData(memory.bytes, b.gfns, b.firstSeq, b.data);
            pagesReceived += b.gfns.length;
            early?.markReceived(b.gfns);
            break;
          }
          case Msg.PAGES_RAW: {
            const b = decodePages(f.payload, false);
            for (let i = 0; i < b.gfns.length; i++) {
              const g = b.gfns[i];
              if (g >= memory.npages)
                throw new PeerError(`PAGES_RAW: gfn ${g} is outside the guest (${memory.npages} pages)`);
              memory.bytes.set(b.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), g * PAGE_SIZE);
            }
            pagesReceived += b.gfns.length;
            early?.markReceived(b.gfns);
            break;
          }
          case Msg.ROUND_END:
            await ch.send(Msg.ROUND_ACK, f.payload);
            this.o.log?.event('round-end', f.payload.readUInt32LE(0), { pagesReceived });
            break;
          case Msg.GUEST_PAGE_TABLES: {
            if (f.payload.length !== memory.cbits.words.byteLength) {
              throw new PeerError(
                `GUEST_PAGE_TABLES: expected ${memory.cbits.words.byteLength} bytes, got ${f.payload.length}`,
              );
            }
            new Uint8Array(
              memory.cbits.words.buffer,
              memory.cbits.words.byteOffset,
              memory.cbits.words.byteLength,
            ).set(f.payload);
            // Every page is in and the page tables too: finish the early
            // digests, or hash the whole view on other cores while the rest
            // (c-bit state, VMSA, digests) arrives.
            ownDigests = early
              ? early.finish(memory)
              : guestViewDigests(memory.key, memory.bytes, memory.cbits.words, memory.npages);
            ownDigests.catch(() => {});
            break;
          }
          case Msg.PAGE_TABLES_PRELIM:
            early = EarlyDigests.start(memory, f.payload);
            break;
          case Msg.CBIT_STATE:
            cbitState = PageStateMap.deserialize(f.payload);
            if (cbitState.npages !== memory.npages)
              throw new PeerError(`CBIT_STATE covers ${cbitState.npages} pages, the guest ${memory.npages}`);
            break;
          case Msg.MIGRATION_CONTROL:
            migrationControl = decodeU64(f.payload, 'MIGRATION_CONTROL');
            break;
          case Msg.VMSA: {
            const b = decodePages(f.payload, true);
            vcpuState = psp.receiveUpdateVmsa(b.gfns, b.firstSeq, b.data);
            break;
          }
          case Msg.DIGESTS: {
            if (!cbitState || vcpuState === undefined)
              throw new PeerError('DIGESTS arrived before the c-bit state and vCPU state');
            if (!ownDigests) throw new PeerError('DIGESTS arrived before the guest page tables');
            const verdict = this.verify(
              memory.npages,
              await ownDigests,
              decodeDigests(f.payload, memory.npages),
              hello,
            );
            this.o.log?.event(verdict.verified ? 'resume' : 'verify-failed', 0, { ...verdict });
            await ch.send(Msg.RESULT, encodeResult(verdict));
            if (!verdict.verified) {
              return { ...verdict, hello, migrationControl, pagesReceived };
            }
            return { ...verdict, hello, memory, cbitState, migrationControl, pagesReceived, vcpuState };
          }
          case Msg.ABORT:
            throw new PeerError(`the source aborted: ${decodeText(f.payload, 'ABORT')}`);
          default:
            throw new PeerError(`unexpected message ${f.type} from the source`);
        }
      }
    } catch (err) {
      // The partial guest is discarded: nothing returns it, so it goes with
      // this frame. Tell the source why if it is still there.
      this.o.log?.event('abort', 0, { reason: (err as Error).message });
      await ch.send(Msg.ABORT, encodeText((err as Error).message)).catch(() => {});
      throw err;
    } finally {
      psp.finish(); // RECEIVE_FINISH
      this.o.log?.flush();
    }
  }

  /** Compares the destination guest's view of every page with the source's digests. */
  private verify(
    npages: number,
    mine: Uint8Array,
    source: { digests: Uint8Array; defined: Uint32Array },
    hello: Hello,
  ): VerifyResult {
    const defined = new PageBitmap(npages);
    defined.words.set(source.defined.subarray(0, defined.words.length));
    const a = Buffer.from(mine.buffer, mine.byteOffset, mine.byteLength);
    const b = Buffer.from(source.digests.buffer, source.digests.byteOffset, source.digests.byteLength);
    let mismatched = 0;
    const first: number[] = [];
    for (let g = 0; g < npages; g++) {
      if (hello.verify === 'defined' && !defined.test(g)) continue;
      const o = g * DIGEST_BYTES;
      if (a.compare(b, o, o + DIGEST_BYTES, o, o + DIGEST_BYTES) !== 0) {
        mismatched++;
        if (first.length < MAX_LISTED_MISMATCHES) first.push(g);
      }
    }
    const verified = mismatched === 0;
    const generationAfter = verified
      ? Math.max(this.o.minGeneration ?? 0, hello.generation + 1)
      : hello.generation;
    return {
      verified,
      mismatched,
      firstMismatches: first,
      generationAfter,
      message: verified
        ? `all ${npages} pages verified (${hello.verify})`
        : `${mismatched} pages differ from the source's view at pause (${hello.verify}); first: ${first.join(', ')}`,
    };
  }
}

/**
 * The destination's digests started before the final round (docs/design.md §3
 * keeps verification inside the downtime; this keeps most of its cost out):
 * every page is hashed under the source's page tables from just before the
 * pause, then the pages received afterwards, and those whose c-bit differs
 * in the final tables, are hashed again.
 */
class EarlyDigests {
  private readonly received: PageBitmap;

  private constructor(
    private readonly cbits: PageBitmap,
    private readonly digests: Promise<Uint8Array>,
  ) {
    this.received = new PageBitmap(cbits.npages);
  }

  static start(memory: GuestMemory, tables: Buffer): EarlyDigests {
    const cbits = new PageBitmap(memory.npages, { shared: true });
    if (tables.length !== cbits.words.byteLength) {
      throw new PeerError(
        `PAGE_TABLES_PRELIM: expected ${cbits.words.byteLength} bytes, got ${tables.length}`,
      );
    }
    new Uint8Array(cbits.words.buffer, 0, cbits.words.byteLength).set(tables);
    const digests = guestViewDigests(memory.key, memory.bytes, cbits.words, memory.npages);
    digests.catch(() => {});
    return new EarlyDigests(cbits, digests);
  }

  /** Pages written from here on are hashed again at the end. */
  markReceived(gfns: Float64Array): void {
    for (const g of gfns) this.received.markAtomic(g);
  }

  async finish(memory: GuestMemory): Promise<Uint8Array> {
    const digests = await this.digests;
    const changed = this.cbits.clone().xor(memory.cbits).or(this.received);
    refreshDigests(digests, memory.key, memory.bytes, memory.cbits.words, changed);
    return digests;
  }
}
