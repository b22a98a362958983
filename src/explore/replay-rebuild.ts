/**
 * Rebuilds the destination of a recorded migration from its log and checks
 * every page against the source guest's view at pause, as the engine's
 * destination does (docs/design.md §3 verification modes):
 *
 * - Each page holds what its LAST send carried (highest event id), taken
 *   from that send's perspective. No page is written after its last send
 *   (every write sets the dirty bit, which a later harvest finds, and every
 *   harvested page is sent), so the content is the source's at pause and
 *   the page reads right at the destination exactly when the perspective
 *   equals the guest's own c-bit at pause (a wrong one reads as
 *   XTS⁻¹[dst](raw) or as the PSP's re-encryption of garbage).
 * - `strict` compares every page; `defined` only those written since their
 *   last conversion (the log's written-at-pause bitmap).
 *
 * The guest's c-bit at pause is the log's guest-cbits-at-pause bitmap (the
 * guest's page tables); the tracker's is the initial state with every later
 * conversion applied in seq order. A page where the two differ had its
 * notification in flight at the pause (the guest broke rule 5).
 */
import type { VerifyMode } from '../migration/stream.js';
import type { Recording } from './replay-log.js';

export type ReplayOutcome = 'clean' | 'corrupted' | 'incomplete';

export interface Rebuild {
  /** Index into Recording.events of each page's last send, or -1 (never sent). */
  lastSend: Int32Array;
  /** The perspective of that send (1 = encrypted). */
  sentAs: Uint8Array;
  /** The tracker's state after every logged conversion (1 = encrypted), or null without an initial state. */
  trackerAtPause: Uint8Array | null;
  outcome: ReplayOutcome;
  /** Why there is no verdict (outcome `incomplete`). */
  incompleteReason: string;
  compared: number;
  corrupted: number[];
}

/** Every page's last send, from the recorded `send` events. */
export function lastSends(rec: Recording): { lastSend: Int32Array; sentAs: Uint8Array } {
  const lastSend = new Int32Array(rec.npages).fill(-1);
  const sentAs = new Uint8Array(rec.npages);
  for (let i = 0; i < rec.events.length; i++) {
    const e = rec.events[i];
    if (e.kind !== 'send') continue;
    const enc = e.detail.perspective === 'encrypted' ? 1 : 0;
    for (const r of e.runs) {
      lastSend.fill(i, r.gfn, r.gfn + r.npages);
      sentAs.fill(enc, r.gfn, r.gfn + r.npages);
    }
  }
  return { lastSend, sentAs };
}

/** The tracker's state after applying every conversion later than round 0's sync to the initial state. */
export function trackerState(rec: Recording): Uint8Array | null {
  if (!rec.initial) return null;
  const s = rec.initial.slice();
  for (const c of rec.conversions) if (c.seq > rec.initialSeq) s.fill(c.encrypted, c.gfn, c.gfn + c.npages);
  return s;
}

/** Rebuilds the destination and verifies it under `mode`. */
export function rebuild(rec: Recording, mode: VerifyMode): Rebuild {
  const { lastSend, sentAs } = lastSends(rec);
  const trackerAtPause = trackerState(rec);
  const base = { lastSend, sentAs, trackerAtPause, compared: 0, corrupted: [] as number[] };
  const incomplete = (why: string): Rebuild => ({ ...base, outcome: 'incomplete', incompleteReason: why });
  if (rec.pauseIndex < 0) {
    const ended = rec.events.find((e) => e.kind === 'abort');
    return incomplete(
      ended
        ? `the migration aborted before the pause (${String(ended.detail.reason)}): the destination never resumed`
        : `the log stops in round ${rec.events.at(-1)?.round ?? 0} before the pause (a crashed run): nothing to verify`,
    );
  }
  if (!rec.pausedRoundFinished)
    return incomplete(
      `the paused round ${rec.pausedRound} did not finish (no round-end): the destination never had every page`,
    );
  const guest = rec.guestAtPause!;
  const written = rec.writtenAtPause!;
  let compared = 0;
  const corrupted: number[] = [];
  for (let g = 0; g < rec.npages; g++) {
    if (mode === 'defined' && written[g] === 0) continue;
    compared++;
    if (lastSend[g] < 0 || sentAs[g] !== guest[g]) corrupted.push(g);
  }
  return {
    ...base,
    outcome: corrupted.length > 0 ? 'corrupted' : 'clean',
    incompleteReason: '',
    compared,
    corrupted,
  };
}
