/**
 * The migration log's on-disk format (docs/migration-log.md): a SQLite
 * database whose identity, tables and digest chain both the writer
 * (migration-log.ts) and the reader (log-reader.ts) take from here, so the
 * two cannot drift apart.
 *
 * Integrity: every transaction the writer commits appends one `commits` row
 * holding SHA-256(previous digest ‖ canonical bytes of the rows it added).
 * The chain starts from the digest of the `meta` rows. A reader recomputes
 * it, so a row changed, removed or added after it was written is found, and
 * named by the commit (and first event) it belongs to. The chain carries no
 * key: it proves the log is as its writer left it, not who the writer was.
 */
import { createHash, type Hash } from 'node:crypto';
import { DatabaseFormatError } from '../common/errors.js';

/** `PRAGMA application_id`: "SVML". */
export const LOG_APPLICATION_ID = 0x5356_4d4c;
/** meta.magic. */
export const LOG_MAGIC = 'sevtrack-migration-log';
/** meta.version and `PRAGMA user_version`; readers refuse any other. */
export const LOG_VERSION = 2;

export const LOG_SCHEMA = `
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  t_us INTEGER NOT NULL,
  kind TEXT NOT NULL,
  round INTEGER NOT NULL,
  detail TEXT NOT NULL
);
CREATE TABLE page_runs (
  id INTEGER PRIMARY KEY,
  event_id INTEGER NOT NULL,
  gfn INTEGER NOT NULL,
  npages INTEGER NOT NULL,
  encrypted INTEGER
);
CREATE TABLE conversions (
  id INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL,
  vcpu INTEGER NOT NULL,
  gfn INTEGER NOT NULL,
  npages INTEGER NOT NULL,
  old_encrypted INTEGER NOT NULL,
  encrypted INTEGER NOT NULL
);
CREATE TABLE states (
  id INTEGER PRIMARY KEY,
  event_id INTEGER NOT NULL,
  name TEXT NOT NULL,
  format TEXT NOT NULL,
  bytes BLOB NOT NULL
);
CREATE TABLE commits (
  n INTEGER PRIMARY KEY,
  events_to INTEGER NOT NULL,
  page_runs_to INTEGER NOT NULL,
  conversions_to INTEGER NOT NULL,
  states_to INTEGER NOT NULL,
  digest BLOB NOT NULL
);
`;

/** The tables a commit covers, in the order their rows enter its digest. */
export const CHAINED_TABLES = ['events', 'page_runs', 'conversions', 'states'] as const;
export type ChainedTable = (typeof CHAINED_TABLES)[number];

export interface EventRow {
  id: number;
  t_us: number;
  kind: string;
  round: number;
  detail: string;
}
export interface PageRunRow {
  id: number;
  event_id: number;
  gfn: number;
  npages: number;
  encrypted: number | null;
}
export interface ConversionRow {
  id: number;
  seq: number;
  vcpu: number;
  gfn: number;
  npages: number;
  old_encrypted: number;
  encrypted: number;
}
export interface StateRow {
  id: number;
  event_id: number;
  name: string;
  format: string;
  bytes: Uint8Array;
}
export interface CommitRow {
  n: number;
  events_to: number;
  page_runs_to: number;
  conversions_to: number;
  states_to: number;
  digest: Uint8Array;
}

/** The columns of each chained table, in digest order (a state's bytes follow its columns). */
export const COLUMNS: Record<ChainedTable, readonly string[]> = {
  events: ['id', 't_us', 'kind', 'round', 'detail'],
  page_runs: ['id', 'event_id', 'gfn', 'npages', 'encrypted'],
  conversions: ['id', 'seq', 'vcpu', 'gfn', 'npages', 'old_encrypted', 'encrypted'],
  states: ['id', 'event_id', 'name', 'format'],
};

/** The first link of the chain: the meta rows, sorted by key. */
export function metaDigest(meta: ReadonlyMap<string, string>): Buffer {
  const h = createHash('sha256');
  for (const key of [...meta.keys()].sort()) h.update(`${JSON.stringify([key, meta.get(key)])}\n`);
  return h.digest();
}

/**
 * Accumulates one commit's digest: SHA-256(previous ‖ table name line ‖ one
 * JSON array line per row, columns in COLUMNS order ‖ a state's bytes).
 */
export class CommitDigest {
  private readonly h: Hash;

  constructor(previous: Uint8Array) {
    this.h = createHash('sha256').update(previous);
  }

  table(name: ChainedTable): void {
    this.h.update(`#${name}\n`);
  }

  row(values: readonly unknown[], bytes?: Uint8Array): void {
    this.h.update(`${JSON.stringify(values)}\n`);
    if (bytes) this.h.update(bytes);
  }

  digest(): Buffer {
    return this.h.digest();
  }
}

export type LogProblem =
  | 'missing'
  | 'not-sqlite'
  | 'not-a-log'
  | 'newer-version'
  | 'older-version'
  | 'damaged'
  | 'tampered'
  | 'invalid-event';

/** A file that is not a readable migration log; `problem` says why, `eventId` where. */
export class MigrationLogError extends DatabaseFormatError {
  constructor(
    path: string,
    readonly problem: LogProblem,
    message: string,
    readonly eventId?: number,
    options?: { cause?: unknown },
  ) {
    super(path, message, options);
  }
}
