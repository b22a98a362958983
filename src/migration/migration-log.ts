/**
 * MigrationLog: the evidence of one migration (docs/migration-log.md), in a
 * new SQLite file: every conversion the guest made, every harvest, sync,
 * send and resend, the pause, the final diff, the verification with every
 * corrupted gfn, resume, generation or abort — enough for `sevtrack replay`
 * to rebuild the destination and name the cause of each corrupted page.
 *
 * Ordering contract: events are numbered in the order they are recorded, so
 * a round's `harvest` before its `sync` means the dirty log was read first.
 * Events are buffered and committed, each commit one transaction chained to
 * the previous by digest (log-schema.ts), at every `round-end`, at `pause`,
 * at the verdict, at `abort` and at close: after kill -9 the file holds every
 * round up to the last one finished. Page sets are stored as (gfn, npages)
 * runs, so a 2 GiB guest's bulk round is a few thousand rows.
 */
import Database from 'better-sqlite3';
import { DatabaseFormatError } from '../common/errors.js';
import { gfnsToRuns, type PageRange, type StateRange } from '../common/ranges.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { ConversionTap } from '../vmm/hypercall-backend.js';
import {
  CHAINED_TABLES,
  type ChainedTable,
  CommitDigest,
  LOG_APPLICATION_ID,
  LOG_MAGIC,
  LOG_SCHEMA,
  LOG_VERSION,
  metaDigest,
} from './log-schema.js';

/** Who wrote a log: the source (one-process runs too) or a two-process destination. */
export type LogRole = 'source' | 'destination';

export interface LogIdentity {
  role: LogRole;
  npages: number;
  vcpus: number;
  protocol: string;
  verify: string;
  /** Every flag of the run, for the record. */
  params: Record<string, unknown>;
}

/**
 * One guest conversion as the tracker consumed it from a vCPU's exit:
 * `oldEncrypted` is the tracker's state of the run before the change (a
 * change over runs of mixed old state is recorded as one entry per run).
 */
export interface ConversionRecord {
  seq: number;
  vcpu: number;
  gfn: number;
  npages: number;
  oldEncrypted: boolean;
  encrypted: boolean;
}

/** The destination's verdict (stream.ts VerifyResult), with every corrupted gfn. */
export interface VerificationRecord {
  resumed: boolean;
  verified: boolean;
  mode: string;
  comparedPages: number;
  skippedPages: number;
  skipReason: string;
  /** Every mismatched gfn, ascending. */
  mismatchedGfns: readonly number[];
  message: string;
}

type Detail = Record<string, unknown>;
type PendingRun = [gfn: number, npages: number, encrypted: number | null];

interface PendingEvent {
  t: number;
  kind: string;
  round: number;
  detail: string;
  runs?: PendingRun[];
  states?: { name: string; format: string; bytes: Uint8Array }[];
}

/** Appends gfn to a list of runs, extending the last run when it follows it. */
export function appendGfn(runs: PageRange[], gfn: number): void {
  const last = runs.at(-1);
  if (last && last.gfn + last.npages === gfn) last.npages++;
  else runs.push({ gfn, npages: 1 });
}

/** Page runs without a state (harvests, resends, corrupted pages). */
const plain = (runs: readonly PageRange[]): PendingRun[] => runs.map((r) => [r.gfn, r.npages, null]);
/** Page runs with the state each carries (sync deltas, the final diff). */
const stated = (runs: readonly StateRange[]): PendingRun[] =>
  runs.map((r) => [r.gfn, r.npages, r.encrypted ? 1 : 0]);

function pagesOf(runs: readonly PageRange[]): number {
  let n = 0;
  for (const r of runs) n += r.npages;
  return n;
}

export class MigrationLog {
  private pending: PendingEvent[] = [];
  /** Flat [seq, vcpu, gfn, npages, old, new] sextets since the last commit. */
  private conversionsPending: number[] = [];
  private readonly t0 = performance.now();
  private digest: Buffer;
  private commits = 0;
  private next = { events: 1, page_runs: 1, conversions: 1, states: 1 };
  private readonly stmts;
  /** The round of the newest event (events without their own round take it). */
  lastRound = 0;
  private events = 0;
  /** The sync sequence number of each state a sync returned, so a send can name the state it used. */
  private readonly stateSeqs = new WeakMap<object, number>();

  private constructor(
    readonly path: string,
    private readonly db: Database.Database,
    first: Buffer,
  ) {
    this.digest = first;
    this.stmts = {
      event: db.prepare('INSERT INTO events (id, t_us, kind, round, detail) VALUES (?, ?, ?, ?, ?)'),
      run: db.prepare('INSERT INTO page_runs (id, event_id, gfn, npages, encrypted) VALUES (?, ?, ?, ?, ?)'),
      conversion: db.prepare(
        'INSERT INTO conversions (id, seq, vcpu, gfn, npages, old_encrypted, encrypted) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      state: db.prepare('INSERT INTO states (id, event_id, name, format, bytes) VALUES (?, ?, ?, ?, ?)'),
      commit: db.prepare(
        'INSERT INTO commits (n, events_to, page_runs_to, conversions_to, states_to, digest) VALUES (?, ?, ?, ?, ?, ?)',
      ),
    };
  }

  /** Creates a new log at `path`; an existing database there is refused (logs are evidence). */
  static create(path: string, id: LogIdentity): MigrationLog {
    let db: Database.Database;
    try {
      db = new Database(path);
      const tables = (
        db.prepare("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table'").get() as { n: number }
      ).n;
      if (tables > 0) {
        db.close();
        throw new DatabaseFormatError(
          path,
          'already holds a database; pass a new --log path (logs are never overwritten)',
        );
      }
    } catch (err) {
      if (err instanceof DatabaseFormatError) throw err;
      throw new DatabaseFormatError(path, `cannot create the migration log (${(err as Error).message})`, {
        cause: err,
      });
    }
    // WAL + NORMAL: a commit survives a crash of this process (kill -9), and
    // costs no fsync on the migration's path.
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    const meta = new Map<string, string>([
      ['magic', LOG_MAGIC],
      ['version', String(LOG_VERSION)],
      ['role', id.role],
      ['npages', String(id.npages)],
      ['vcpus', String(id.vcpus)],
      ['protocol', id.protocol],
      ['verify', id.verify],
      ['started_at', new Date().toISOString()],
      ['params', JSON.stringify(id.params)],
    ]);
    const first = metaDigest(meta);
    db.transaction(() => {
      db.exec(LOG_SCHEMA);
      const ins = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
      for (const [k, v] of meta) ins.run(k, v);
      db.prepare(
        'INSERT INTO commits (n, events_to, page_runs_to, conversions_to, states_to, digest) VALUES (0, 0, 0, 0, 0, ?)',
      ).run(first);
      db.pragma(`application_id = ${LOG_APPLICATION_ID}`);
      db.pragma(`user_version = ${LOG_VERSION}`);
    })();
    return new MigrationLog(path, db, first);
  }

  /** No event recorded yet: the migration has not started (start or abort comes first). */
  get empty(): boolean {
    return this.events === 0;
  }

  private push(kind: string, round: number, detail: Detail, runs?: PendingRun[]): PendingEvent {
    this.events++;
    this.lastRound = round;
    const e: PendingEvent = {
      t: Math.round((performance.now() - this.t0) * 1000),
      kind,
      round,
      detail: JSON.stringify(detail),
      runs,
    };
    this.pending.push(e);
    return e;
  }

  /** The handshake is done: the migration starts. */
  start(d: { generation: number; migrationControl: number }): void {
    this.push('start', 0, d);
  }

  /**
   * Conversions the tracker consumed from the vCPUs' exits, in any protocol
   * (they are the guest's truth, not what the variant used). Buffered until
   * the next commit.
   */
  conversions(list: Iterable<ConversionRecord>): void {
    const p = this.conversionsPending;
    for (const c of list) p.push(c.seq, c.vcpu, c.gfn, c.npages, c.oldEncrypted ? 1 : 0, c.encrypted ? 1 : 0);
  }

  /**
   * A tap for the tracker (SourceGuest.tapConversions): records each change
   * it applies after `seq` with the state it replaced. The old state comes
   * from a copy of the tracker's state at `seq` (`state`) that the tap keeps
   * current, change by change in sequence order, so it is the tracker's
   * state just before each change. Changes at or before `seq` are already
   * in `state` and skipped.
   */
  conversionTap(state: PageStateMap, seq: number): ConversionTap {
    const mirror = state.clone();
    let last = seq;
    return (changes) => {
      const p = this.conversionsPending;
      for (const c of changes) {
        if (c.seq <= last) continue;
        last = c.seq;
        const end = c.gfn + c.npages;
        const enc = c.encrypted ? 1 : 0;
        for (const r of mirror.ranges(c.gfn)) {
          if (r.gfn >= end) break;
          const from = Math.max(r.gfn, c.gfn);
          p.push(c.seq, c.vcpu, from, Math.min(r.gfn + r.npages, end) - from, r.encrypted ? 1 : 0, enc);
        }
        mirror.apply(c.gfn, c.npages, c.encrypted);
      }
    };
  }

  /** Round `round` harvested (and cleared) these dirty pages. */
  harvest(round: number, dirty: readonly PageRange[]): void {
    this.push('harvest', round, { pages: pagesOf(dirty) }, plain(dirty));
  }

  /** A sync consumed the changes (previousSeq, seq]; `delta` holds the runs whose state changed. */
  sync(
    round: number,
    s: { seq: number; previousSeq: number; delta: readonly StateRange[]; state?: object },
  ): void {
    if (s.state) this.stateSeqs.set(s.state, s.seq);
    this.push(
      'sync',
      round,
      { seq: s.seq, previousSeq: s.previousSeq, changedPages: pagesOf(s.delta) },
      stated(s.delta),
    );
  }

  /** Pages added to the round's send set only because their c-bit changed (rule 3). */
  resend(round: number, runs: readonly PageRange[]): void {
    if (runs.length > 0) this.push('resend', round, { pages: pagesOf(runs) }, plain(runs));
  }

  /**
   * One batch of pages sent (source) or received (destination, `kind`
   * `receive`) from one perspective: encrypted through the PSP (`pspSeq` is
   * its first message sequence) or shared as raw bytes. `perspective` is the
   * state the source took it from: a state a logged sync returned is named
   * by that sync's seq (detail.stateSeq; null for any other).
   */
  send(
    round: number,
    encrypted: boolean,
    gfns: ArrayLike<number>,
    pspSeq = 0,
    kind: 'send' | 'receive' = 'send',
    perspective?: object,
  ): void {
    const state = encrypted ? 1 : 0;
    const runs: PendingRun[] = gfnsToRuns(gfns).map((r) => [r.gfn, r.npages, state]);
    const stateSeq = perspective ? (this.stateSeqs.get(perspective) ?? null) : null;
    this.push(
      kind,
      round,
      { perspective: encrypted ? 'encrypted' : 'shared', pages: gfns.length, pspSeq, stateSeq },
      runs,
    );
  }

  /** The round is over (the destination applied every page of it): commits. */
  roundEnd(round: number, d: Record<string, number>): void {
    this.push('round-end', round, d);
    this.commit();
  }

  /** The downtime target cannot be met (the convergence decision and its message): the run aborts, or pauses anyway. */
  notConverging(round: number, d: Detail): void {
    this.push('not-converging', round, d);
  }

  /**
   * The guest is paused; `round` is the final round. `guestCbits` (the
   * guest's own page tables) and `written` (pages written since their last
   * conversion) are the truth at pause, as bitmaps. Commits.
   */
  pause(round: number, detail: Detail, truth?: { guestCbits: Uint32Array; written: Uint32Array }): void {
    const e = this.push('pause', round, detail);
    if (truth) {
      e.states = [
        { name: 'guest-cbits-at-pause', format: 'bitmap', bytes: wordsBytes(truth.guestCbits) },
        { name: 'written-at-pause', format: 'bitmap', bytes: wordsBytes(truth.written) },
      ];
    }
    this.commit();
  }

  /** The paused round's diff of the full state against the last live sync: every page whose c-bit differs. */
  finalDiff(round: number, d: { fromSeq: number; toSeq: number; delta: readonly StateRange[] }): void {
    this.push(
      'final-diff',
      round,
      { fromSeq: d.fromSeq, toSeq: d.toSeq, pages: pagesOf(d.delta) },
      stated(d.delta),
    );
  }

  /** A full c-bit state (PageStateMap serialization) sent or received, under `name`. */
  cbitState(
    round: number,
    name: string,
    bytes: Uint8Array,
    counts: { rangeCount: number; encryptedCount: number },
  ): void {
    const e = this.push('cbit-state', round, {
      name,
      ranges: counts.rangeCount,
      encrypted: counts.encryptedCount,
    });
    e.states = [{ name, format: 'page-state-map', bytes }];
  }

  /** The destination's verdict with every corrupted page. Commits. */
  verification(round: number, v: VerificationRecord): void {
    this.push(
      'verification',
      round,
      {
        resumed: v.resumed,
        verified: v.verified,
        mode: v.mode,
        comparedPages: v.comparedPages,
        skippedPages: v.skippedPages,
        skipReason: v.skipReason,
        mismatched: v.mismatchedGfns.length,
        message: v.message,
      },
      plain(gfnsToRuns(v.mismatchedGfns)),
    );
    this.commit();
  }

  /** A guest resumed: on the destination (verified) or, after a failed verification, on the source. */
  resume(round: number, where: 'destination' | 'source'): void {
    this.push('resume', round, { where });
  }

  /** The guest's system generation after resume. */
  generation(round: number, d: { before: number; after: number }): void {
    this.push('generation', round, d);
  }

  /** The migration aborted: why. Commits. */
  abort(round: number, reason: string): void {
    this.push('abort', round, { reason });
    this.commit();
  }

  /**
   * Writes every buffered event and conversion in one transaction, chained
   * to the previous commit by digest. A no-op when nothing is buffered.
   */
  commit(): void {
    if (!this.db.open || (this.pending.length === 0 && this.conversionsPending.length === 0)) return;
    const events = this.pending;
    const conv = this.conversionsPending;
    this.pending = [];
    this.conversionsPending = [];
    const n = this.next;
    const d = new CommitDigest(this.digest);
    const s = this.stmts;
    const rows: Record<ChainedTable, unknown[][]> = {
      events: [],
      page_runs: [],
      conversions: [],
      states: [],
    };
    const bytes: Uint8Array[] = [];
    for (const e of events) {
      const id = n.events++;
      rows.events.push([id, e.t, e.kind, e.round, e.detail]);
      for (const r of e.runs ?? []) rows.page_runs.push([n.page_runs++, id, r[0], r[1], r[2]]);
      for (const st of e.states ?? []) {
        rows.states.push([n.states++, id, st.name, st.format]);
        bytes.push(st.bytes);
      }
    }
    for (let i = 0; i < conv.length; i += 6) {
      rows.conversions.push([
        n.conversions++,
        conv[i],
        conv[i + 1],
        conv[i + 2],
        conv[i + 3],
        conv[i + 4],
        conv[i + 5],
      ]);
    }
    for (const t of CHAINED_TABLES) {
      d.table(t);
      for (const [i, r] of rows[t].entries()) d.row(r, t === 'states' ? bytes[i] : undefined);
    }
    const digest = d.digest();
    this.db.transaction(() => {
      for (const r of rows.events) s.event.run(r);
      for (const r of rows.page_runs) s.run.run(r);
      for (const r of rows.conversions) s.conversion.run(r);
      for (const [i, r] of rows.states.entries()) s.state.run([...r, Buffer.from(bytes[i])]);
      s.commit.run(++this.commits, n.events - 1, n.page_runs - 1, n.conversions - 1, n.states - 1, digest);
    })();
    this.digest = digest;
  }

  /** Records the run's outcome as the `end` event, commits, and closes the file. */
  close(result: Detail): void {
    if (!this.db.open) return;
    this.push('end', this.lastRound, result);
    this.commit();
    // A finished log is one self-contained file (a crashed one keeps its -wal).
    this.db.pragma('journal_mode = DELETE');
    this.db.close();
  }
}

/** A copy of a bitmap's words as bytes (the guest's may be shared memory). */
function wordsBytes(words: Uint32Array): Buffer {
  return Buffer.from(new Uint8Array(words.buffer, words.byteOffset, words.byteLength));
}
