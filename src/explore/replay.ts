/**
 * `sevtrack replay`: from a migration log alone, rebuild what the
 * destination received, verify every page against the source guest's view
 * at pause, name the chain of events behind each corrupted page, compare
 * with the verdict the engine recorded, and optionally re-run the recorded
 * guest events under another protocol variant (docs/replay.md).
 */
import type { Protocol, VerifyMode } from '../migration/stream.js';
import { explainCorrupted, type PageCause } from './replay-causes.js';
import { loadRecording, type Recording } from './replay-log.js';
import { type ReplayOutcome, rebuild } from './replay-rebuild.js';
import { type WhatIf, whatIf } from './replay-whatif.js';

export interface ReplayOptions {
  /** Verification mode; default the one the migration ran with. */
  verify?: VerifyMode;
  /** Re-run the guest events under this variant too. */
  protocol?: Protocol;
  /** Explain at most this many corrupted pages (all are counted). */
  explainLimit?: number;
}

/** One round as the log shows it (the plot's rows). */
export interface ReplayRound {
  round: number;
  paused: boolean;
  /** Pages the round's harvest found dirty. */
  dirty: number;
  sent: number;
  sentEncrypted: number;
  sentShared: number;
  /** Guest c-bit changes (pages) the round's sync consumed; the paused round also those after the last sync. */
  cbitChanges: number;
  /** Pages sent only for their c-bit change (rule 3, or rule 4's pause-time diff). */
  cbitResends: number;
  startUs: number;
  endUs: number;
}

export interface ReplayReport {
  path: string;
  protocol: Protocol;
  verify: VerifyMode;
  npages: number;
  vcpus: number;
  complete: boolean;
  outcome: ReplayOutcome;
  /** Why there is no verdict (outcome `incomplete`), else empty. */
  incompleteReason: string;
  comparedPages: number;
  corruptedCount: number;
  /** Every corrupted page with its chain of events (up to explainLimit). */
  corrupted: PageCause[];
  recorded: { mode: string; verified: boolean; resumed: boolean; mismatched: number } | null;
  /** Whether the replay's corrupted pages equal the recorded ones (null: no verdict recorded, or another --verify). */
  agreesWithRecord: boolean | null;
  rounds: ReplayRound[];
  pause: { round: number; atUs: number; downtimeUs: number | null } | null;
  whatIf: WhatIf | null;
  elapsedMs: number;
}

/** Per-round figures from the log's events and conversions. */
export function roundsOf(rec: Recording): ReplayRound[] {
  const rounds = new Map<number, ReplayRound>();
  const get = (n: number, t: number) => {
    let r = rounds.get(n);
    if (!r) {
      r = {
        round: n,
        paused: n === rec.pausedRound,
        dirty: 0,
        sent: 0,
        sentEncrypted: 0,
        sentShared: 0,
        cbitChanges: 0,
        cbitResends: 0,
        startUs: t,
        endUs: t,
      };
      rounds.set(n, r);
    }
    r.endUs = Math.max(r.endUs, t);
    return r;
  };
  const syncs: { round: number; seq: number }[] = [];
  for (const e of rec.events) {
    if (
      e.kind === 'start' ||
      e.kind === 'end' ||
      e.kind === 'abort' ||
      e.kind === 'generation' ||
      e.kind === 'resume'
    )
      continue;
    const r = get(e.round, e.tUs);
    const pages = e.runs.reduce((n, x) => n + x.npages, 0);
    if (e.kind === 'harvest') r.dirty += pages;
    else if (e.kind === 'send') {
      r.sent += pages;
      if (e.detail.perspective === 'encrypted') r.sentEncrypted += pages;
      else r.sentShared += pages;
    } else if (e.kind === 'resend') r.cbitResends += pages;
    else if (e.kind === 'sync') syncs.push({ round: e.round, seq: e.detail.seq as number });
  }
  let k = 0;
  const lastRound = rec.pausedRound >= 0 ? rec.pausedRound : Math.max(0, ...rounds.keys());
  for (const c of rec.conversions) {
    while (k < syncs.length && syncs[k].seq < c.seq) k++;
    const round = k < syncs.length ? syncs[k].round : lastRound;
    const r = rounds.get(round);
    if (r) r.cbitChanges += c.npages;
  }
  return [...rounds.values()].sort((a, b) => a.round - b.round);
}

/** Replays the log at `path`. Throws MigrationLogError (a misuse: exit 2) for a log it cannot trust. */
export function replay(path: string, o: ReplayOptions = {}): ReplayReport {
  const t0 = performance.now();
  const rec = loadRecording(path);
  const verify = o.verify ?? rec.verify;
  const rb = rebuild(rec, verify);
  const corrupted = explainCorrupted(rec, rb, o.explainLimit);
  const recorded = rec.recorded;
  let agrees: boolean | null = null;
  if (recorded && recorded.mode === verify && rb.outcome !== 'incomplete')
    agrees =
      recorded.mismatched.length === rb.corrupted.length &&
      recorded.mismatched.every((g, i) => g === rb.corrupted[i]);
  const pauseEvent = rec.pauseIndex >= 0 ? rec.events[rec.pauseIndex] : undefined;
  const resumed = rec.events.find((e) => e.kind === 'resume');
  return {
    path,
    protocol: rec.protocol,
    verify,
    npages: rec.npages,
    vcpus: rec.meta.vcpus,
    complete: rec.complete,
    outcome: rb.outcome,
    incompleteReason: rb.incompleteReason,
    comparedPages: rb.compared,
    corruptedCount: rb.corrupted.length,
    corrupted,
    recorded: recorded && {
      mode: recorded.mode,
      verified: recorded.verified,
      resumed: recorded.resumed,
      mismatched: recorded.mismatched.length,
    },
    agreesWithRecord: agrees,
    rounds: roundsOf(rec),
    pause: pauseEvent
      ? {
          round: pauseEvent.round,
          atUs: pauseEvent.tUs,
          downtimeUs: resumed ? resumed.tUs - pauseEvent.tUs : null,
        }
      : null,
    whatIf: o.protocol && rb.outcome !== 'incomplete' ? whatIf(rec, o.protocol, verify) : null,
    elapsedMs: performance.now() - t0,
  };
}
