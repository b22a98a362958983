/**
 * The destination side of a migration over a frame channel: it allocates the
 * guest the source announces, receives, verifies and resumes it. Used by a
 * two-process destination, by the one-process run's destination thread
 * (destination-worker.ts) and over local sockets.
 */
import type { MessagePort } from 'node:worker_threads';
import { PAGE_SIZE } from '../common/ranges.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { FrameChannel } from './channel.js';
import { type DestinationResult, MigrationDestination } from './destination.js';
import { guestPagesFor } from './guest-size.js';
import { MigrationLog } from './migration-log.js';
import type { PspLimits } from './psp.js';

/** The destination side over `channel`. */
export async function runDestination(
  p: { peerTimeoutMs: number; handshakeTimeoutMs?: number; psp: PspLimits; log?: string },
  channel: FrameChannel,
): Promise<DestinationResult> {
  let log: MigrationLog | undefined;
  const dest = new MigrationDestination({
    channel,
    peerTimeoutMs: p.peerTimeoutMs,
    handshakeTimeoutMs: p.handshakeTimeoutMs,
    psp: p.psp,
    allocate: (npages, hello) => {
      // A two-process destination holds one guest: refuse what this machine cannot hold.
      guestPagesFor(npages * PAGE_SIZE, { guests: 1 });
      if (p.log)
        log = MigrationLog.create(p.log, {
          role: 'destination',
          npages,
          vcpus: hello.vcpus,
          protocol: hello.protocol,
          verify: hello.verify,
          params: { peerTimeoutMs: p.peerTimeoutMs, handshakeTimeoutMs: p.handshakeTimeoutMs, psp: p.psp },
        });
      return GuestMemory.create(npages);
    },
    get log() {
      return log;
    },
  });
  try {
    const r = await dest.run();
    log?.close({ verified: r.verified, resumed: r.resumed, mismatched: r.mismatchedPages });
    return r;
  } catch (err) {
    log?.close({ aborted: (err as Error).message });
    throw err;
  } finally {
    channel.close();
  }
}

/** The destination's side of a one-process run: its verdict (the guest it built is dropped). */
export type DestinationVerdict = Omit<
  DestinationResult,
  'hello' | 'memory' | 'cbitState' | 'migrationControl' | 'vcpuState'
>;

export interface DestinationWorkerData {
  port: MessagePort;
  peerTimeoutMs: number;
  handshakeTimeoutMs: number;
  psp: PspLimits;
}

/** What the worker reports back: the verdict, without the guest. */
export interface DestinationWorkerResult extends Partial<DestinationVerdict> {
  ok: boolean;
  error?: string;
}

/** The verdict part of a destination result (what crosses a thread). */
export function verdictOf(r: DestinationResult): DestinationVerdict {
  const { hello: _h, memory: _m, cbitState: _c, migrationControl: _mc, vcpuState: _v, ...verdict } = r;
  return verdict;
}
