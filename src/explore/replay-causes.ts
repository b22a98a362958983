/**
 * Names the chain of events behind each corrupted page of a replayed
 * migration, from facts the log proves (docs/migration-log.md, "naming
 * causes"): the page's last send (round, perspective, the sync whose state
 * gave it, why the page was in the round's send set), the conversions after
 * that sync (seq, vCPU, new c-bit), whether the guest wrote the page since
 * (written-at-pause), which sync consumed the change and why that did not
 * resend it (the variant's plan, protocol.ts PLANS), and the pause-time diff.
 *
 * Guest writes are not logged; a write's place is inferred only where the
 * log pins it: a page written since its last conversion whose last harvest
 * was the one before its last send was written after that conversion and
 * before that harvest.
 */
import type { LogEvent } from '../migration/log-events.js';
import type { ConversionRow } from '../migration/log-schema.js';
import { PLANS } from './protocol.js';
import type { Recording } from './replay-log.js';
import type { Rebuild } from './replay-rebuild.js';

/** The short name of a cause, stable for scripts. */
export type CauseKind =
  | 'never-sent'
  | 'in-flight-at-pause'
  | 'round-0-state'
  | 'paused-round-without-sync'
  | 'converted-between-sync-and-harvest'
  | 'change-not-resent';

export interface PageCause {
  gfn: number;
  cause: CauseKind;
  /** The guest's c-bit at pause, and what the page was last sent as. */
  cbitAtPause: 'encrypted' | 'shared';
  written: boolean;
  lastSend: {
    eventId: number;
    round: number;
    paused: boolean;
    perspective: 'encrypted' | 'shared';
    stateSeq: number | null;
    reason: 'bulk round' | 'dirty' | 'c-bit changed' | 'dirty, c-bit changed';
  } | null;
  /** Conversions of the page after the send's state, in seq order. */
  conversions: { seq: number; vcpu: number; encrypted: boolean }[];
  /** The sync that consumed the last of them, if any. */
  consumedBy: { eventId: number; round: number; seq: number } | null;
  /** The chain of events as one line. */
  text: string;
}

const stateName = (enc: boolean | number) => (enc ? 'encrypted' : 'shared');

/** Whether a sorted-or-not run list covers gfn (runs are few per event, pages many). */
function covers(e: LogEvent | undefined, gfn: number): boolean {
  if (!e) return false;
  for (const r of e.runs) if (r.gfn <= gfn && gfn < r.gfn + r.npages) return true;
  return false;
}

/** The conversions of each listed page, in seq order (one pass over the log's conversions). */
function conversionsOf(rec: Recording, gfns: readonly number[]): Map<number, ConversionRow[]> {
  const want = new Uint8Array(rec.npages);
  for (const g of gfns) want[g] = 1;
  const out = new Map<number, ConversionRow[]>();
  for (const c of rec.conversions)
    for (let g = c.gfn; g < c.gfn + c.npages; g++) {
      if (!want[g]) continue;
      const list = out.get(g);
      if (list) list.push(c);
      else out.set(g, [c]);
    }
  return out;
}

/** Explains every corrupted page of `rb` (at most `limit`, in gfn order). */
export function explainCorrupted(rec: Recording, rb: Rebuild, limit = Number.POSITIVE_INFINITY): PageCause[] {
  const gfns = rb.corrupted.slice(0, limit);
  const convs = conversionsOf(rec, gfns);
  // Per round: its harvest, sync, resend and final-diff events, and whether the sync came first.
  const byRound = new Map<
    number,
    { harvest?: LogEvent; sync?: LogEvent; resend?: LogEvent; finalDiff?: LogEvent; syncFirst: boolean }
  >();
  const roundOf = (n: number) => {
    const r = byRound.get(n) ?? { syncFirst: false };
    byRound.set(n, r);
    return r;
  };
  const syncs: LogEvent[] = [];
  for (const e of rec.events) {
    if (e.kind === 'harvest') roundOf(e.round).harvest = e;
    else if (e.kind === 'sync') {
      const r = roundOf(e.round);
      r.sync = e;
      r.syncFirst = r.harvest === undefined;
      syncs.push(e);
    } else if (e.kind === 'resend') roundOf(e.round).resend = e;
    else if (e.kind === 'final-diff') roundOf(e.round).finalDiff = e;
  }
  return gfns.map((g) => explainPage(rec, rb, g, convs.get(g) ?? [], roundOf, syncs));
}

function explainPage(
  rec: Recording,
  rb: Rebuild,
  g: number,
  all: ConversionRow[],
  roundOf: (n: number) => {
    harvest?: LogEvent;
    sync?: LogEvent;
    resend?: LogEvent;
    finalDiff?: LogEvent;
    syncFirst: boolean;
  },
  syncs: LogEvent[],
): PageCause {
  const atPause = rec.guestAtPause![g] === 1;
  const written = rec.writtenAtPause![g] === 1;
  const name = `gfn 0x${g.toString(16)}`;
  const base = { gfn: g, cbitAtPause: stateName(atPause), written } as const;
  const plan = PLANS[rec.protocol];
  const idx = rb.lastSend[g];
  if (idx < 0)
    return {
      ...base,
      cause: 'never-sent',
      lastSend: null,
      conversions: [],
      consumedBy: null,
      text: `${name}: never sent, so the destination holds no data for it`,
    };
  const send = rec.events[idx];
  const paused = send.round === rec.pausedRound;
  const r = roundOf(send.round);
  const dirty = covers(r.harvest, g);
  const changed = covers(r.resend, g);
  const reason =
    send.round === 0
      ? 'bulk round'
      : dirty && changed
        ? 'dirty, c-bit changed'
        : changed
          ? 'c-bit changed'
          : 'dirty';
  const stateSeq = typeof send.detail.stateSeq === 'number' ? send.detail.stateSeq : null;
  const perspective = send.detail.perspective === 'encrypted' ? 'encrypted' : 'shared';
  const after = all.filter((c) => stateSeq === null || c.seq > stateSeq);
  const last = after.at(-1);
  const consumer = last ? syncs.find((s) => (s.detail.seq as number) >= last.seq) : undefined;
  const consumedBy = consumer
    ? { eventId: consumer.id, round: consumer.round, seq: consumer.detail.seq as number }
    : null;
  const lastSend = { eventId: send.id, round: send.round, paused, perspective, stateSeq, reason } as const;
  const conversions = after.map((c) => ({ seq: c.seq, vcpu: c.vcpu, encrypted: c.encrypted === 1 }));

  const clauses: string[] = [];
  const why =
    reason === 'bulk round'
      ? 'with every page'
      : reason === 'dirty'
        ? `its harvest found it dirty`
        : reason === 'c-bit changed'
          ? 'for its c-bit change'
          : 'dirty and for its c-bit change';
  // The newest sync before the send: a send with an older state than it used a stale one.
  const newest = syncs.filter((s) => s.id < send.id).at(-1);
  const newestSeq = newest ? (newest.detail.seq as number) : -1;
  const stateOf =
    stateSeq === null
      ? 'a c-bit state of no logged sync'
      : `c-bit state at sync seq ${stateSeq}${stateSeq === rec.initialSeq && send.round > 0 && newestSeq > stateSeq ? ", round 0's" : ''}`;
  clauses.push(
    `${name}: sent in round ${send.round}${paused ? ' (paused)' : ''} as ${perspective} (${why}; ${stateOf})`,
  );

  // What the guest did after the state the send used.
  let cause: CauseKind;
  const inFlight = rb.trackerAtPause !== null && rb.trackerAtPause[g] !== rec.guestAtPause![g];
  const ownSync = r.sync;
  if (inFlight && !last) {
    clauses.push(
      `the guest's own c-bit table says ${stateName(atPause)} at pause but the tracker was never told (its notification was in flight at the pause: the guest broke rule 5)`,
    );
    cause = 'in-flight-at-pause';
  } else {
    if (last) {
      const verb = (c: ConversionRow) => (c.encrypted ? 'encrypted' : 'decrypted');
      clauses.push(
        after.length === 1
          ? `the guest (vCPU ${last.vcpu}) ${verb(last)} it at seq ${last.seq}`
          : `the guest converted it ${after.length} times after that, last ${verb(last)} by vCPU ${last.vcpu} at seq ${last.seq}`,
      );
    } else {
      clauses.push(
        `the guest's c-bit at pause is ${stateName(atPause)} but the log holds no conversion of it after that state`,
      );
    }
    // Rutherford's race, proven: the round read the c-bits before the dirty log, its harvest
    // found the page dirty, the guest had converted it after that sync, and wrote it since then
    // (written-at-pause) with no later harvest finding it — so before this harvest.
    const race =
      !paused &&
      r.syncFirst &&
      dirty &&
      written &&
      last !== undefined &&
      stateSeq !== null &&
      ownSync !== undefined &&
      (ownSync.detail.seq as number) === stateSeq;
    const writeText = written
      ? race
        ? `and wrote it before round ${send.round}'s harvest, which found it dirty and cleared its dirty bit after the round's sync had already read the old c-bit`
        : 'and wrote it'
      : 'and did not rewrite it (undefined contents, compared only under --verify strict)';
    // The write (or its absence) completes the conversion's clause: "the guest ... and wrote it".
    if (last) clauses[clauses.length - 1] += ` ${writeText}`;
    else
      clauses.push(
        written ? 'the guest wrote it since' : 'the guest has not written it since its last conversion',
      );
    if (send.round > 0 && stateSeq === rec.initialSeq && newest && (newest.detail.seq as number) > stateSeq) {
      clauses.push(
        `${rec.protocol} sends every page with round 0's state, though the syncs had reached seq ${newest.detail.seq as number}`,
      );
      cause = 'round-0-state';
    } else if (paused && !ownSync) {
      clauses.push(
        `the paused round did not sync (${rec.protocol}): it sent with the last live sync's state`,
      );
      cause = 'paused-round-without-sync';
    } else if (race) {
      cause = 'converted-between-sync-and-harvest';
    } else {
      if (stateSeq !== null && newest && (newest.detail.seq as number) > stateSeq)
        clauses.push(
          `it was sent with an older state than the last sync's (seq ${newest.detail.seq as number})`,
        );
      cause = 'change-not-resent';
    }
    if (consumer && consumer.id > send.id) {
      const inPaused = consumer.round === rec.pausedRound;
      const p = inPaused ? plan.final : plan.live;
      clauses.push(
        `${inPaused ? 'the paused' : `round ${consumer.round}'s`} sync (seq ${consumer.detail.seq as number}) consumed the change${p.resendChanged ? '' : `, but ${rec.protocol} does not resend a page for a c-bit change alone${inPaused ? '' : ' while the guest runs'}`}`,
      );
      const fd = roundOf(rec.pausedRound).finalDiff;
      if (!inPaused && fd && !covers(fd, g))
        clauses.push(
          `the pause-time diff (seq ${fd.detail.fromSeq as number} to ${fd.detail.toSeq as number}) compares with the last live sync, which already had the change, so it did not list it`,
        );
      else if (!inPaused && !fd && rec.pausedRound >= 0)
        clauses.push(`the paused round made no pause-time diff`);
    } else if (last && !consumer) {
      clauses.push('no later sync saw the change');
    }
  }
  clauses.push('it was never resent');
  return { ...base, cause, lastSend, conversions, consumedBy, text: clauses.join('; ') };
}
