/**
 * Chains (`sevtrack migrate --hops N`): one running guest migrated N times in
 * this process, A → B → C …. Each hop's destination keeps its own tracker
 * and, once verified, resumes the guest, whose vCPUs run on from the
 * migrated memory and registers; that destination is the next hop's
 * source, its tracker the state the next hop syncs from. The guest's
 * sysgenid (its service and tracked watchers) follows the guest: each hop
 * bumps its generation once and the overseer waits for the watchers.
 *
 * Ordering per hop: the source guest stops only after the destination's
 * verdict (a failed hop leaves it running and ends the chain); the
 * destination guest runs before the bump. Intermediate trackers are
 * temporary; `--db` names the last destination's, the VM's state at the end.
 */
import { InvalidArgumentError } from '../common/errors.js';
import type { GuestSysgenid } from '../sysgenid/guest-sysgenid.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import { type FrameChannel, memoryChannelPair } from './channel.js';
import type { ResumeReport, RunningGuest } from './destination-resume.js';
import {
  type DestinationOutcome,
  type DestinationParams,
  receiveGuest,
  runDestination,
  startGuestSysgenid,
} from './run-destination.js';
import {
  type BootedGuest,
  bootGuest,
  guestPages,
  type MigrateParams,
  sourceOptions,
} from './run-migration.js';
import { MigrationSource, type MigrationSummary } from './source.js';
import { MIGRATION_FRAME } from './stream.js';

/** One hop: the source's summary, how the guest resumed, and whether the destination's tracker equals the guest's own table. */
export interface HopSummary extends MigrationSummary {
  hop: number;
  /** The destination tracker's final state equals the c-bit table in the migrated guest memory. */
  trackerMatchesGuest: boolean;
  resume?: ResumeReport;
}

export interface ChainSummary {
  hops: HopSummary[];
  /** Every hop verified. */
  verified: boolean;
  generationBefore: number;
  generationAfter: number;
  totalMs: number;
}

/**
 * Migrates one guest p.hops times in this process; resolves with every
 * hop's summary (stopping at the first hop that did not verify).
 */
export async function migrateChain(p: MigrateParams): Promise<ChainSummary> {
  if (p.backend !== 'sim')
    throw new InvalidArgumentError(
      '--hops',
      `chains migrate sim guests; --backend ${p.backend} migrates one hop`,
    );
  const t0 = performance.now();
  const npages = guestPages(p, 2); // a source and a destination guest live here at each hop
  const sysgenid = await startGuestSysgenid(p);
  let current: BootedGuest | RunningGuest | undefined;
  const hops: HopSummary[] = [];
  try {
    const booted = await bootGuest(p, npages);
    current = booted;
    const generationBefore = booted.guest.generation;
    for (let hop = 1; hop <= p.hops; hop++) {
      const { summary, arrived } = await oneHop(p, current, hop, sysgenid);
      hops.push(summary);
      if (!arrived) break;
      // The guest lives at the destination now: the source's copy goes, and
      // its memory with it (not at the next GC: 3 guests at the peak otherwise).
      const left = current.guest.memory;
      await current.stop();
      if (left instanceof GuestMemory) left.release();
      current = arrived;
    }
    const last = hops[hops.length - 1];
    return {
      hops,
      verified: hops.length === p.hops && hops.every((h) => h.verified),
      generationBefore,
      generationAfter: last.resume?.generation ?? last.generationAfter,
      totalMs: performance.now() - t0,
    };
  } finally {
    await current?.stop();
    await sysgenid?.close();
  }
}

/** One hop from `from` to a new destination in this process. */
async function oneHop(
  p: MigrateParams,
  from: BootedGuest | RunningGuest,
  hop: number,
  sysgenid: GuestSysgenid | undefined,
): Promise<{ summary: HopSummary; arrived?: RunningGuest }> {
  const [a, b] = memoryChannelPair(MIGRATION_FRAME);
  const store = 'store' in from ? from.store : from.tracker.store;
  const received = receiveGuest(
    {
      peerTimeoutMs: p.peerTimeoutMs,
      handshakeTimeoutMs: 0, // the source is this process
      psp: p.psp,
      db: hop === p.hops ? p.db : undefined,
      guestOpsPerMs: p.guestOpsPerMs,
      watcherTimeoutMs: p.watcherTimeoutMs,
    },
    b,
    sysgenid,
  );
  received.catch(() => {});
  try {
    const summary = await new MigrationSource(sourceOptions(p, from.guest, store, from.vm, a)).run();
    const r = await received;
    const hopSummary: HopSummary = {
      ...summary,
      hop,
      trackerMatchesGuest: r.result.resumed && r.result.trackerMismatchGfns.length === 0,
      resume: r.report,
    };
    if (r.report) hopSummary.generationAfter = r.report.generation;
    return { summary: hopSummary, arrived: r.running };
  } finally {
    a.close();
  }
}

/** A one-hop chain from a one-process migration's two sides. */
export function chainOf(summary: MigrationSummary, destination: DestinationOutcome): ChainSummary {
  const hop: HopSummary = {
    ...summary,
    hop: 1,
    trackerMatchesGuest: destination.resumed && destination.trackerMismatchGfns.length === 0,
    resume: destination.resume,
  };
  if (destination.resume) hop.generationAfter = destination.resume.generation;
  return {
    hops: [hop],
    verified: hop.verified,
    generationBefore: summary.generationBefore,
    generationAfter: hop.generationAfter,
    totalMs: summary.totalMs,
  };
}

/**
 * A destination that passes the guest on (`--role destination
 * --then-connect`): receives, verifies and resumes the guest over
 * `channel`, then migrates the running guest to `connect()`'s peer, its
 * tracker as the source's state. Resolves with both sides' results (no
 * onward summary when the guest did not resume here).
 */
export async function runRelay(
  p: MigrateParams & Pick<DestinationParams, 'tracker'>,
  channel: FrameChannel,
  connect: () => Promise<FrameChannel>,
): Promise<{ destination: DestinationOutcome; onward?: MigrationSummary }> {
  if (p.backend !== 'sim') {
    // Handed to this run as to runDestination, which ends here.
    p.tracker?.close();
    channel.close();
    throw new InvalidArgumentError('--then-connect', `onward migrations run sim guests, not ${p.backend}`);
  }
  let onward: MigrationSummary | undefined;
  const destination = await runDestination(p, channel, async (running) => {
    const next = await connect();
    try {
      const source = new MigrationSource(
        sourceOptions(p, running.guest, running.tracker.store, running.vm, next),
      );
      onward = await source.run();
    } finally {
      next.close();
    }
  });
  return { destination, onward };
}
