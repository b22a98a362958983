/** The source's options, progress and summary types, and its refusal error. */
import { RuntimeFailure } from '../common/errors.js';
import type { BackendName, SourceGuest } from '../vmm/backend.js';
import type { FrameChannel } from './channel.js';
import type { OnNoConvergence } from './convergence.js';
import type { MigrationLog } from './migration-log.js';
import type { PspLimits } from './psp.js';
import type { Protocol, VerifyMode, VerifyResult } from './stream.js';
import type { Tracker } from './tracker.js';
import type { ServiceRecord } from './tracker-service.js';

/** The guest has not said it reports every c-bit change: the migration does not start. */
export class MigrationRefusedError extends RuntimeFailure {
  constructor(message: string) {
    super('ERR_NOT_READY', message);
  }
}

export interface SourceOptions {
  guest: SourceGuest;
  /** The c-bit tracker: a CbitStore in this process, or a ServiceTracker (tracker.ts). */
  store: Tracker;
  vm: number;
  channel: FrameChannel;
  protocol: Protocol;
  verify: VerifyMode;
  psp: PspLimits;
  maxDowntimeMs: number;
  maxRounds: number;
  /** What to do when --max-downtime cannot be met (default abort). */
  onNoConvergence?: OnNoConvergence;
  forceUnsafe: boolean;
  /** Pages per stream frame. */
  batchPages: number;
  peerTimeoutMs: number;
  /**
   * Modelled cost of each read of the dirty log and of the c-bit state, in
   * ns per guest page (read-cost.ts; default 4, about 1 ms per GiB).
   */
  readCostNsPerPage?: number;
  log?: MigrationLog;
  onRound?: (p: RoundProgress) => void;
  /** Called after each frame of a round with the pages sent so far and the round's total. */
  onPages?: (round: number, sent: number, total: number) => void;
  /**
   * Cancels the migration when aborted (its reason, an Error, is the abort's
   * reason): between frames and phases, up to the last point where the
   * destination cannot yet resume (before the digests go out). The source
   * then aborts as on any failure: its guest runs on, the peer is told, the
   * log records it. Later, the migration finishes.
   */
  signal?: AbortSignal;
}

export interface RoundProgress {
  round: number;
  paused: boolean;
  pagesSent: number;
  cbitRetransmits: number;
  dirtyLeft: number;
  expectedDowntimeMs: number;
  /** The link's bandwidth the estimate uses (from the last round that moved at least the DIGESTS table). */
  bandwidthMBps: number;
}

/**
 * Where the downtime went, step by step from the source's side (they add up
 * to downtimeMs): a figure well over --max-downtime says which step to look
 * at, e.g. a slow disk under the trackers' commits shows in readsMs (the
 * source's sync) or destinationMs (the destination's final commit).
 */
export interface DowntimePhases {
  /** The paused round's harvest and c-bit sync (the tracker commits what it consumed first). */
  readsMs: number;
  /** The paused round's pages sent, up to the destination's ROUND_ACK. */
  pagesMs: number;
  /**
   * The c-bit state, migration control, vCPU state and the reference's view
   * MACs sent, with the source's rehash of the pages whose MAC is stale at
   * pause (none with the safe protocol; many with a variant that skips a
   * resend). A destination on the source's own thread (kvm over inproc, a
   * chain's hops) handles its messages meanwhile: its commit of the paused
   * round, its loading of the vCPU state and page tables, and its rehash of
   * pages that arrived from the other perspective count here too.
   */
  stateMs: number;
  /**
   * From the view MACs sent to RESULT: the destination's checks (tracker,
   * digests) and its final commit. Its guest resumes after RESULT
   * (timeToAvailableMs on the destination's side), outside the downtime.
   */
  destinationMs: number;
}

/** The phases for people, in order (the CLI's summary, the bench's stderr). */
export function describeDowntimePhases(d: DowntimePhases): string {
  const ms = (v: number) => `${v.toFixed(1)} ms`;
  return `final reads ${ms(d.readsMs)}, final pages ${ms(d.pagesMs)}, state ${ms(d.stateMs)}, destination's check and commit ${ms(d.destinationMs)}`;
}

/** The destination's verdict (VerifyResult: verified, resumed, compared, skipped and mismatched pages, message) and the run's figures. */
export interface MigrationSummary extends VerifyResult {
  /** The guest's backend (sim, kvm). */
  backend: BackendName;
  /** Whether the estimate fitted --max-downtime when the guest was paused. */
  converged: boolean;
  estimatedDowntimeMs: number;
  rounds: number;
  pagesSent: number;
  sealedPages: number;
  rawPages: number;
  cbitRetransmits: number;
  bytes: number;
  throughputMBps: number;
  downtimeMs: number;
  /** downtimeMs step by step. */
  downtimePhases: DowntimePhases;
  totalMs: number;
  generationBefore: number;
  protocol: Protocol;
  verify: VerifyMode;
  /** With `--service`: what the host service holds about this migration. */
  service?: ServiceRecord;
}
