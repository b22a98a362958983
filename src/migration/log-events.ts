/**
 * The event kinds of a migration log and the rules a valid log keeps
 * (docs/migration-log.md lists them with their details). checkEvents turns
 * the raw rows into typed events and names the first event that breaks a
 * rule, so a replay never reasons from a log it could not trust.
 */
import {
  type ConversionRow,
  type EventRow,
  MigrationLogError,
  type PageRunRow,
  type StateRow,
} from './log-schema.js';

export interface LogMeta {
  version: number;
  role: 'source' | 'destination';
  npages: number;
  vcpus: number;
  protocol: string;
  verify: string;
  startedAt: string;
  params: Record<string, unknown>;
}

/** Event kinds and how their page runs' `encrypted` column is used. */
const KINDS = {
  start: 'none',
  harvest: 'null',
  sync: 'state',
  resend: 'null',
  send: 'state',
  receive: 'state',
  'round-end': 'none',
  'not-converging': 'none',
  pause: 'none',
  'final-diff': 'state',
  'cbit-state': 'none',
  verification: 'null',
  resume: 'none',
  generation: 'none',
  abort: 'none',
  end: 'none',
} as const;

export type EventKind = keyof typeof KINDS;
export const EVENT_KINDS = Object.keys(KINDS) as EventKind[];

export interface EventRun {
  gfn: number;
  npages: number;
  /** The state a send/receive used, or a sync/final-diff's new state; null for plain page sets. */
  encrypted: boolean | null;
}

export interface LogEvent {
  id: number;
  tUs: number;
  kind: EventKind;
  round: number;
  detail: Record<string, unknown>;
  runs: EventRun[];
  /** Names of the states stored with this event. */
  states: string[];
}

function num(detail: Record<string, unknown>, key: string): number | undefined {
  const v = detail[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * Types the rows and checks the rules: a known kind, a JSON-object detail,
 * `start` first and `end` last, rounds never going back, page runs inside
 * the guest with the state column their kind requires, a send's runs in its
 * perspective, syncs chained by sequence (each previousSeq is the last
 * sync's seq), one pause, a verification whose runs hold exactly its
 * mismatched pages; conversions inside the guest with 0/1 states.
 */
export function checkEvents(
  path: string,
  meta: LogMeta,
  rows: EventRow[],
  runs: PageRunRow[],
  states: StateRow[],
  conversions: ConversionRow[],
): LogEvent[] {
  const bad = (e: { id: number; kind: string }, why: string): never => {
    throw new MigrationLogError(path, 'invalid-event', `event #${e.id} (${e.kind}): ${why}`, e.id);
  };
  const byEvent = new Map<number, EventRun[]>();
  for (const r of runs) {
    const list = byEvent.get(r.event_id) ?? [];
    list.push({ gfn: r.gfn, npages: r.npages, encrypted: r.encrypted === null ? null : r.encrypted === 1 });
    byEvent.set(r.event_id, list);
    if (
      !Number.isSafeInteger(r.gfn) ||
      r.gfn < 0 ||
      !Number.isSafeInteger(r.npages) ||
      r.npages < 1 ||
      r.gfn + r.npages > meta.npages
    )
      bad(
        { id: r.event_id, kind: 'page run' },
        `run (gfn ${r.gfn}, npages ${r.npages}) is outside the guest's ${meta.npages} pages`,
      );
    if (r.encrypted !== null && r.encrypted !== 0 && r.encrypted !== 1)
      bad({ id: r.event_id, kind: 'page run' }, `encrypted is ${r.encrypted}, expected 0, 1 or NULL`);
  }
  const statesByEvent = new Map<number, string[]>();
  for (const s of states) {
    if (s.format !== 'bitmap' && s.format !== 'page-state-map')
      bad(
        { id: s.event_id, kind: 'state' },
        `state ${s.name} has format ${s.format}, expected bitmap or page-state-map`,
      );
    statesByEvent.set(s.event_id, [...(statesByEvent.get(s.event_id) ?? []), s.name]);
  }
  const out: LogEvent[] = [];
  let round = 0;
  let lastSyncSeq: number | undefined;
  let paused = false;
  for (const row of rows) {
    if (!(row.kind in KINDS)) bad(row, `unknown kind; expected one of ${EVENT_KINDS.join(', ')}`);
    const kind = row.kind as EventKind;
    let detail: Record<string, unknown>;
    try {
      detail = JSON.parse(row.detail);
    } catch {
      return bad(row, 'detail is not JSON');
    }
    if (typeof detail !== 'object' || detail === null || Array.isArray(detail))
      bad(row, 'detail is not a JSON object');
    // A migration whose handshake failed (or was cancelled first) never started: abort, then end.
    if (out.length === 0 && kind !== 'start' && kind !== 'abort')
      bad(row, 'the first event must be start (or abort, for a migration that never started)');
    if (out.length > 0 && out.at(-1)!.kind === 'end') bad(row, 'an event after end');
    if (!Number.isSafeInteger(row.round) || row.round < round)
      bad(row, `round ${row.round} goes back (after round ${round})`);
    round = row.round;
    const evRuns = byEvent.get(row.id) ?? [];
    byEvent.delete(row.id);
    const rule = KINDS[kind];
    if (rule === 'none' && evRuns.length > 0) bad(row, 'has page runs, which this kind never carries');
    if (rule === 'null' && evRuns.some((r) => r.encrypted !== null)) bad(row, 'a page run carries a state');
    if (rule === 'state' && evRuns.some((r) => r.encrypted === null)) bad(row, 'a page run lacks its state');
    const pages = evRuns.reduce((n, r) => n + r.npages, 0);
    if (kind === 'send' || kind === 'receive') {
      const enc = detail.perspective === 'encrypted';
      if (!enc && detail.perspective !== 'shared') bad(row, `perspective ${String(detail.perspective)}`);
      if (evRuns.some((r) => r.encrypted !== enc))
        bad(row, `a page run disagrees with perspective ${String(detail.perspective)}`);
    }
    if (['harvest', 'resend', 'send', 'receive'].includes(kind) && num(detail, 'pages') !== pages)
      bad(row, `detail.pages ${String(detail.pages)} but its runs hold ${pages} pages`);
    if (kind === 'sync') {
      const seq = num(detail, 'seq');
      const prev = num(detail, 'previousSeq');
      if (seq === undefined || prev === undefined || prev > seq)
        bad(row, `sequence range (${prev}, ${seq}] is not a range`);
      if (lastSyncSeq !== undefined && prev !== lastSyncSeq)
        bad(row, `previousSeq ${prev} is not the last sync's seq ${lastSyncSeq}`);
      lastSyncSeq = seq;
    }
    if (kind === 'pause') {
      if (paused) bad(row, 'a second pause');
      paused = true;
    }
    if (kind === 'verification' && num(detail, 'mismatched') !== pages)
      bad(row, `detail.mismatched ${String(detail.mismatched)} but its runs hold ${pages} corrupted pages`);
    out.push({
      id: row.id,
      tUs: row.t_us,
      kind,
      round: row.round,
      detail,
      runs: evRuns,
      states: statesByEvent.get(row.id) ?? [],
    });
  }
  for (const [id] of byEvent) bad({ id, kind: 'page run' }, 'page runs of an event that does not exist');
  for (const c of conversions) {
    if (
      !Number.isSafeInteger(c.seq) ||
      c.seq < 1 ||
      c.gfn < 0 ||
      c.npages < 1 ||
      c.gfn + c.npages > meta.npages
    )
      throw new MigrationLogError(
        path,
        'invalid-event',
        `conversion row ${c.id} (seq ${c.seq}, gfn ${c.gfn}, npages ${c.npages}) is outside the guest`,
      );
    if ((c.old_encrypted !== 0 && c.old_encrypted !== 1) || (c.encrypted !== 0 && c.encrypted !== 1))
      throw new MigrationLogError(path, 'invalid-event', `conversion row ${c.id}: states must be 0 or 1`);
  }
  return out;
}
