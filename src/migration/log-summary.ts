/**
 * A checked migration log (log-reader.ts) summarised per round: what was
 * harvested, synced, sent from which perspective and resent, where the guest
 * paused, the verdict with every corrupted page, and how the run ended.
 * `sevtrack log show` prints it; scripts read it as JSON.
 */
import type { PageRange } from '../common/ranges.js';
import type { LogEvent, LogMeta } from './log-events.js';
import type { LogContents } from './log-reader.js';

export interface RoundSummary {
  round: number;
  paused: boolean;
  harvested: number;
  syncs: { previousSeq: number; seq: number; changedPages: number }[];
  sentEncrypted: number;
  sentShared: number;
  resent: number;
  /** Pages whose c-bit differed at pause from the last live sync (paused round of safe, cbit-first). */
  finalDiff: number | null;
  /** Whether the round-end was recorded (the destination acknowledged every page of it). */
  finished: boolean;
}

export interface LogSummary {
  meta: LogMeta;
  complete: boolean;
  commits: number;
  events: number;
  rounds: RoundSummary[];
  conversions: {
    count: number;
    firstSeq: number | null;
    lastSeq: number | null;
    byVcpu: Record<string, number>;
  };
  /** The convergence message when the downtime target could not be met, else null. */
  notConverging: string | null;
  verification: { verified: boolean; mode: string; mismatched: number; corrupted: PageRange[] } | null;
  resumed: 'destination' | 'source' | null;
  generation: { before: number; after: number } | null;
  abort: string | null;
}

function roundOf(rounds: Map<number, RoundSummary>, n: number): RoundSummary {
  let r = rounds.get(n);
  if (!r) {
    r = {
      round: n,
      paused: false,
      harvested: 0,
      syncs: [],
      sentEncrypted: 0,
      sentShared: 0,
      resent: 0,
      finalDiff: null,
      finished: false,
    };
    rounds.set(n, r);
  }
  return r;
}

const pagesOf = (e: LogEvent) => e.runs.reduce((n, r) => n + r.npages, 0);

export function summarizeLog(c: LogContents): LogSummary {
  const rounds = new Map<number, RoundSummary>();
  const s: LogSummary = {
    meta: c.meta,
    complete: c.complete,
    commits: c.commits,
    events: c.events.length,
    rounds: [],
    conversions: { count: c.conversions.length, firstSeq: null, lastSeq: null, byVcpu: {} },
    notConverging: null,
    verification: null,
    resumed: null,
    generation: null,
    abort: null,
  };
  for (const e of c.events) {
    const d = e.detail;
    switch (e.kind) {
      case 'harvest':
        roundOf(rounds, e.round).harvested += pagesOf(e);
        break;
      case 'sync':
        roundOf(rounds, e.round).syncs.push({
          previousSeq: d.previousSeq as number,
          seq: d.seq as number,
          changedPages: pagesOf(e),
        });
        break;
      case 'send':
      case 'receive':
        if (d.perspective === 'encrypted') roundOf(rounds, e.round).sentEncrypted += pagesOf(e);
        else roundOf(rounds, e.round).sentShared += pagesOf(e);
        break;
      case 'resend':
        roundOf(rounds, e.round).resent += pagesOf(e);
        break;
      case 'final-diff':
        roundOf(rounds, e.round).finalDiff = pagesOf(e);
        break;
      case 'round-end':
        roundOf(rounds, e.round).finished = true;
        break;
      case 'pause':
        roundOf(rounds, e.round).paused = true;
        break;
      case 'not-converging':
        s.notConverging = typeof d.message === 'string' ? d.message : 'the downtime target cannot be met';
        break;
      case 'verification':
        s.verification = {
          verified: d.verified as boolean,
          mode: d.mode as string,
          mismatched: d.mismatched as number,
          corrupted: e.runs.map((r) => ({ gfn: r.gfn, npages: r.npages })),
        };
        break;
      case 'resume':
        s.resumed = d.where as 'destination' | 'source';
        break;
      case 'generation':
        s.generation = { before: d.before as number, after: d.after as number };
        break;
      case 'abort':
        s.abort = d.reason as string;
        break;
    }
  }
  for (const conv of c.conversions) {
    s.conversions.firstSeq = Math.min(s.conversions.firstSeq ?? conv.seq, conv.seq);
    s.conversions.lastSeq = Math.max(s.conversions.lastSeq ?? conv.seq, conv.seq);
    s.conversions.byVcpu[conv.vcpu] = (s.conversions.byVcpu[conv.vcpu] ?? 0) + 1;
  }
  s.rounds = [...rounds.values()].sort((a, b) => a.round - b.round);
  return s;
}
