/**
 * Convergence, as operators know it from QEMU: pre-copy rounds go on until
 * the downtime the paused phase would take fits --max-downtime. The estimate
 * covers every step of the paused phase, each from a rate measured in this
 * migration:
 *
 *   final harvest + sync (with its diff)          the last live round's reads
 *   sends of the pages left (dirty ∪ converted)    ms per page of the last round
 *   c-bit state, vCPU state, RESULT                 round trips of the last round
 *   the reference's view MACs (16 bytes a page)    the link's bandwidth, from the
 *                                                  last round that moved at least
 *                                                  that many bytes
 *
 * Verification adds no per-page step: both sides take a page's view MAC in
 * the pass that seals or opens (or copies) it, so the pages left are hashed
 * within their send, and the paused phase rehashes only pages whose
 * perspective changed after their last send (the final round resends those).
 * An earlier estimate also priced a rehash of every page left on both sides:
 * 2-3x the downtime measured at 2 GiB mixed, which stopped rounds that would
 * still have halved the dirty set (paused with 14-17k pages and 64-128 ms
 * instead of 0.5-1.4k and 22-44 ms).
 *
 * Fitting is not the only test: while a round still halves the dirty set,
 * another round is cheaper than pausing now (the guest runs through it), so
 * the engine pauses at the smallest set the rounds still shrink to, not at
 * the first that fits (a 2 GiB mixed guest paused with 12-19k pages after
 * one incremental round, 5-7k after two or three). Such a round runs only if
 * twice the set the guest is expected to dirty during it (the last round's
 * dirty rate over the round's length at the last round's rates) would still
 * fit: a margin against a burst. It used to be twice the current set, which
 * on a slowed machine (a 2 GiB mixed guest's 22-25k pages estimated at
 * 185-245 ms) stopped the round that would have left 4-6k, and paused with
 * 160-190 ms of downtime. The price: a burst of more than twice the
 * expected set during such a round pauses over --max-downtime (reported
 * converged, since an earlier round fit), where the old margin held up to
 * twice the current set.
 *
 * When the target cannot be met within --max-rounds (or the dirty set stops
 * shrinking), the default is to abort with the dirty rate against the
 * throughput and what to change; `--on-no-convergence pause` pauses anyway.
 */
import { RuntimeFailure } from '../common/errors.js';
import { PAGE_SIZE } from '../common/ranges.js';

export const ON_NO_CONVERGENCE = ['abort', 'pause'] as const;
export type OnNoConvergence = (typeof ON_NO_CONVERGENCE)[number];

/** The migration would not meet --max-downtime: aborted before the pause, the source guest runs on (exit 3). */
export class NotConvergingError extends RuntimeFailure {
  constructor(message: string) {
    super('ERR_NOT_CONVERGING', message);
  }
}

/**
 * Pause after this many consecutive rounds that did not shrink the dirty set
 * (unless --max-downtime 0 asks for every round up to --max-rounds).
 */
const STALLED_ROUNDS_LIMIT = 3;

/** What one live round measured. */
export interface RoundMeasure {
  /** Time of the round's two reads (harvest and sync). */
  readsMs: number;
  /** Pages sent and the time from the first send to the destination's ROUND_ACK. */
  pagesSent: number;
  sendMs: number;
  /** ROUND_END to ROUND_ACK: one round trip after the last page. */
  roundTripMs: number;
  /** The whole round (reads, sends, acknowledgement). */
  roundMs: number;
}

export interface Decision {
  /** Whether to run another live round. */
  another: boolean;
  estimatedDowntimeMs: number;
  /**
   * Whether the target was met (meaningful once another is false): the
   * estimate fits --max-downtime, or fit at an earlier round whose pause was
   * deferred for rounds that still halved the dirty set (a burst during such
   * a round then pauses at once, never aborts).
   */
  converged: boolean;
  /** Pages the guest dirtied per second during the last round. */
  dirtyPagesPerSec: number;
  /** Pages the migration sent per second during the last round. */
  sentPagesPerSec: number;
}

export class Convergence {
  private last: RoundMeasure | undefined;
  private stalledRounds = 0;
  private bestLeft = Number.POSITIVE_INFINITY;
  /** pagesLeft at the previous decision. */
  private previousLeft = Number.POSITIVE_INFINITY;
  /** The first round after which the estimate fit --max-downtime. */
  private fitAt: number | undefined;
  /** Milliseconds to serialize and send the c-bit state (measured at the last sync). */
  stateMs = 0;
  /** Milliseconds to send the DIGESTS table (its bytes / the link's bandwidth, see MigrationSource.bandwidth), set by the source. */
  digestsMs = 0;

  /**
   * `stopWhenStalled`: pause early once rounds stop shrinking the dirty set
   * (with --on-no-convergence pause: more rounds would only delay the pause);
   * when aborting is the answer, rounds go on to --max-rounds, since a
   * round at a better moment may still meet the target.
   */
  constructor(
    private readonly maxDowntimeMs: number,
    private readonly maxRounds: number,
    private readonly stopWhenStalled = true,
  ) {}

  recordRound(m: RoundMeasure): void {
    this.last = m;
  }

  /** The paused phase's duration if the guest paused now with `pagesLeft` pages to send. */
  estimate(pagesLeft: number): number {
    const m = this.last;
    if (!m) return Number.POSITIVE_INFINITY;
    // Final round's reads and ack, the state messages and the verdict: three round trips.
    return m.readsMs + pagesLeft * sendMsPerPage(m) + this.stateMs + this.digestsMs + 3 * m.roundTripMs;
  }

  /** How long a live round sending `pages` would take at the last round's rates: reads, sends, acknowledgement. */
  private roundMsFor(pages: number): number {
    const m = this.last;
    return m ? m.readsMs + pages * sendMsPerPage(m) + m.roundTripMs : 0;
  }

  /**
   * After round `round` (0 = bulk): whether to run another live round.
   * `pagesLeft` is what the paused round would send now (dirty since the
   * last harvest, plus pages converted since the last sync).
   */
  decide(round: number, pagesLeft: number): Decision {
    const m = this.last;
    const estimatedDowntimeMs = this.estimate(pagesLeft);
    const dirtyPagesPerSec = m ? pagesLeft / Math.max(1e-3, m.roundMs / 1000) : 0;
    const sentPagesPerSec = m && m.sendMs > 0 ? m.pagesSent / (m.sendMs / 1000) : 0;
    const fits = estimatedDowntimeMs <= this.maxDowntimeMs;
    const converged = this.convergedWith(estimatedDowntimeMs);
    const out = { estimatedDowntimeMs, converged, dirtyPagesPerSec, sentPagesPerSec };
    if (pagesLeft < this.bestLeft * 0.9) {
      this.bestLeft = pagesLeft;
      this.stalledRounds = 0;
    } else {
      this.stalledRounds++;
    }
    const halved = pagesLeft > 0 && pagesLeft <= this.previousLeft / 2;
    this.previousLeft = pagesLeft;
    if (round + 1 >= this.maxRounds) return { ...out, another: false };
    // The first decision follows an incremental round: after the bulk round
    // the dirty log holds what changed while everything went out (QEMU, too,
    // completes only after a sync of the dirty bitmap that follows the bulk stage).
    if (round === 0) return { ...out, another: true };
    if (fits) {
      this.fitAt ??= round;
      // Another round while it still halves the dirty set, if twice what the
      // guest should dirty meanwhile (at the last round's rate, for as long as
      // a round sending this set takes) would still fit.
      const expected = dirtyPagesPerSec * (this.roundMsFor(pagesLeft) / 1000);
      return { ...out, another: halved && this.estimate(2 * expected) <= this.maxDowntimeMs };
    }
    // A deferred pause whose extra round did not pay off: pause now, as the earlier fit would have.
    if (this.fitAt !== undefined) return { ...out, another: false };
    if (this.stopWhenStalled && this.stalledRounds >= STALLED_ROUNDS_LIMIT && this.maxDowntimeMs > 0)
      return { ...out, another: false };
    return { ...out, another: true };
  }

  /** Whether pausing with this estimate meets the target (see Decision.converged). */
  convergedWith(estimatedDowntimeMs: number): boolean {
    return estimatedDowntimeMs <= this.maxDowntimeMs || this.fitAt !== undefined;
  }

  /** The operator's message when the target is not met: the rates, and what to change. */
  static explain(d: Decision, rounds: number, maxDowntimeMs: number): string {
    const mbps = (pages: number) => ((pages * PAGE_SIZE) / 1e6).toFixed(1);
    return (
      `the migration does not converge: after ${rounds} rounds the guest dirties ${mbps(d.dirtyPagesPerSec)} MB/s ` +
      `against a throughput of ${mbps(d.sentPagesPerSec)} MB/s, so the expected downtime is ` +
      `${d.estimatedDowntimeMs.toFixed(0)} ms, above --max-downtime ${maxDowntimeMs} ms; ` +
      'raise --max-downtime or --max-rounds, lower the guest load, or pass --on-no-convergence pause to pause anyway'
    );
  }
}

/** Milliseconds per page sent in round `m`. */
function sendMsPerPage(m: RoundMeasure): number {
  return m.pagesSent > 0 ? m.sendMs / m.pagesSent : 0;
}
