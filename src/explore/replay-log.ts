/**
 * A checked migration log (src/migration/log-reader.ts) as a replay needs
 * it: per-page arrays instead of run lists, the c-bit state at round 0's
 * sync, the guest's truth at pause, and the host's reads in recorded order.
 * Everything here comes from the log alone; nothing is inferred yet.
 *
 * Only a source log can be replayed: a two-process destination's log has no
 * conversions, no harvests and no pause state (docs/migration-log.md).
 */

import { PageStateMap } from '../host/page-state-map.js';
import type { LogEvent, LogMeta } from '../migration/log-events.js';
import { MigrationLogReader } from '../migration/log-reader.js';
import type { ConversionRow } from '../migration/log-schema.js';
import { MigrationLogError } from '../migration/log-schema.js';
import { PROTOCOLS, type Protocol, VERIFY_MODES, type VerifyMode } from '../migration/stream.js';

/** One host read as recorded: `index` is its position in Recording.events. */
export interface RecordedRead {
  kind: 'harvest' | 'sync';
  round: number;
  index: number;
  /** The sync's seq (sync reads only). */
  seq: number;
}

export interface Recording {
  path: string;
  meta: LogMeta;
  protocol: Protocol;
  verify: VerifyMode;
  npages: number;
  /** Whether the run reached its `end` event. */
  complete: boolean;
  events: LogEvent[];
  /** Conversions in sequence order. */
  conversions: ConversionRow[];
  /** The tracker's state at round 0's sync (1 = encrypted); null if round 0 never synced. */
  initial: Uint8Array | null;
  /** The seq of round 0's sync. */
  initialSeq: number;
  /** Every harvest and sync, in the order the host made them. */
  reads: RecordedRead[];
  /** Index into events of the pause, or -1. */
  pauseIndex: number;
  /** The paused round, or -1 when the guest was never paused. */
  pausedRound: number;
  /** Whether the paused round's round-end was recorded (every page of it reached the destination). */
  pausedRoundFinished: boolean;
  /** The guest's own c-bit table at pause and the pages written since their last conversion (0/1 per page). */
  guestAtPause: Uint8Array | null;
  writtenAtPause: Uint8Array | null;
  /** The engine's verdict as recorded, or null when the run never got one. */
  recorded: { mode: string; verified: boolean; resumed: boolean; mismatched: number[] } | null;
}

/** Expands a `bitmap` state (bit g of little-endian u32 word g/32) to one byte per page. */
export function bitmapPages(bytes: Uint8Array, npages: number): Uint8Array {
  const out = new Uint8Array(npages);
  for (let g = 0; g < npages; g++) out[g] = (bytes[g >> 3] >> (g & 7)) & 1;
  return out;
}

/** Expands a page-state map to one byte per page (1 = encrypted). */
export function statePages(map: PageStateMap): Uint8Array {
  const out = new Uint8Array(map.npages);
  for (const r of map.ranges(0)) if (r.encrypted) out.fill(1, r.gfn, r.gfn + r.npages);
  return out;
}

/**
 * Opens, checks and loads the source log at `path`. Throws MigrationLogError
 * (exit 2) for a log that cannot be trusted or is not a source's, naming the
 * first bad event where there is one.
 */
export function loadRecording(path: string): Recording {
  const reader = MigrationLogReader.open(path);
  try {
    return fromReader(reader);
  } finally {
    reader.close();
  }
}

function fromReader(reader: MigrationLogReader): Recording {
  const { meta, events, conversions, complete } = reader.contents;
  const path = reader.path;
  if (meta.role !== 'source')
    throw new MigrationLogError(
      path,
      'invalid-event',
      `this is the destination's log of a two-process migration, which records no conversions, harvests or pause state; replay the source's --log`,
    );
  if (!(PROTOCOLS as readonly string[]).includes(meta.protocol))
    throw new MigrationLogError(
      path,
      'tampered',
      `meta.protocol ${JSON.stringify(meta.protocol)} is not a protocol variant`,
    );
  if (!(VERIFY_MODES as readonly string[]).includes(meta.verify))
    throw new MigrationLogError(
      path,
      'tampered',
      `meta.verify ${JSON.stringify(meta.verify)} is not a verification mode`,
    );
  if (!Number.isSafeInteger(meta.npages) || meta.npages < 1)
    throw new MigrationLogError(path, 'tampered', `meta.npages ${meta.npages} is not a page count`);
  const bad = (e: LogEvent, why: string): never => {
    throw new MigrationLogError(path, 'invalid-event', `event #${e.id} (${e.kind}): ${why}`, e.id);
  };
  const npages = meta.npages;
  const reads: RecordedRead[] = [];
  let initial: Uint8Array | null = null;
  let initialSeq = 0;
  let pauseIndex = -1;
  let pausedRound = -1;
  let pausedRoundFinished = false;
  let guestAtPause: Uint8Array | null = null;
  let writtenAtPause: Uint8Array | null = null;
  let recorded: Recording['recorded'] = null;
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    if (e.kind === 'receive') bad(e, "a source's log never receives; is this a destination's log?");
    if (e.kind === 'harvest' || e.kind === 'sync') {
      if (pauseIndex >= 0 && e.round !== pausedRound)
        bad(e, `a ${e.kind} in round ${e.round} after the pause in round ${pausedRound}`);
      const seq = e.kind === 'sync' ? (e.detail.seq as number) : 0;
      if (e.kind === 'sync' && e.round === 0 && initial === null) initialSeq = seq;
      reads.push({ kind: e.kind, round: e.round, index: i, seq });
    } else if (e.kind === 'cbit-state' && e.detail.name === 'initial') {
      const s = reader.state('initial');
      if (!s) bad(e, 'the initial state it names is not stored');
      try {
        initial = statePages(PageStateMap.deserialize(s!.bytes));
      } catch (err) {
        bad(e, `the initial state does not parse (${(err as Error).message})`);
      }
      if (initial!.length !== npages)
        bad(e, `the initial state has ${initial!.length} pages, the guest ${npages}`);
    } else if (e.kind === 'pause') {
      pauseIndex = i;
      pausedRound = e.round;
      const cbits = reader.state('guest-cbits-at-pause');
      const written = reader.state('written-at-pause');
      if (!cbits || !written) bad(e, 'the guest-cbits-at-pause and written-at-pause states are missing');
      const need = Math.ceil(npages / 32) * 4;
      if (cbits!.bytes.length < need || written!.bytes.length < need)
        bad(e, `a pause state holds fewer than the ${need} bytes of ${npages} pages`);
      guestAtPause = bitmapPages(cbits!.bytes, npages);
      writtenAtPause = bitmapPages(written!.bytes, npages);
    } else if (e.kind === 'round-end' && e.round === pausedRound) {
      pausedRoundFinished = true;
    } else if (e.kind === 'verification') {
      const mismatched: number[] = [];
      for (const r of e.runs) for (let g = r.gfn; g < r.gfn + r.npages; g++) mismatched.push(g);
      recorded = {
        mode: String(e.detail.mode),
        verified: e.detail.verified === true,
        resumed: e.detail.resumed === true,
        mismatched,
      };
    }
  }
  const sorted = [...conversions].sort((a, b) => a.seq - b.seq || a.id - b.id);
  return {
    path,
    meta,
    protocol: meta.protocol as Protocol,
    verify: meta.verify as VerifyMode,
    npages,
    complete,
    events,
    conversions: sorted,
    initial,
    initialSeq,
    reads,
    pauseIndex,
    pausedRound,
    pausedRoundFinished,
    guestAtPause,
    writtenAtPause,
    recorded,
  };
}
