/**
 * The migration log (docs/migration-log.md): every event of a migration in
 * SQLite, with the page sets of harvests and sends, so `sevtrack replay` can
 * rebuild the destination and name the events behind each corrupted page.
 * Events are buffered and written in one transaction per round (and on close).
 */
import Database from 'better-sqlite3';
import { DatabaseFormatError } from '../common/errors.js';
import type { StateRange } from '../common/ranges.js';

export const MIGRATION_LOG_APP_ID = 0x5356_4d4c; // "SVML"
export const MIGRATION_LOG_VERSION = 1;

const SCHEMA = `
CREATE TABLE migration (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  started_at TEXT NOT NULL,
  role TEXT NOT NULL,
  npages INTEGER NOT NULL,
  params TEXT NOT NULL,
  result TEXT
);
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  t_ms REAL NOT NULL,
  kind TEXT NOT NULL,
  round INTEGER NOT NULL,
  detail TEXT NOT NULL
);
-- gfns: u64 little-endian each; states: one byte per gfn (1 = sent as
-- encrypted through the PSP, 0 = sent raw as shared), NULL for harvests.
CREATE TABLE page_sets (
  event_id INTEGER NOT NULL REFERENCES events(id),
  gfns BLOB NOT NULL,
  states BLOB
);
CREATE TABLE cbit_changes (
  seq INTEGER PRIMARY KEY,
  gfn INTEGER NOT NULL,
  npages INTEGER NOT NULL,
  encrypted INTEGER NOT NULL
);
CREATE TABLE states (
  name TEXT PRIMARY KEY,
  state BLOB NOT NULL
);
`;

interface Pending {
  t: number;
  kind: string;
  round: number;
  detail: string;
  gfns?: Float64Array;
  states?: Uint8Array;
}

export function gfnsToBlob(gfns: Float64Array): Buffer {
  const b = Buffer.alloc(gfns.length * 8);
  for (let i = 0; i < gfns.length; i++) b.writeBigUInt64LE(BigInt(gfns[i]), i * 8);
  return b;
}

export class MigrationLog {
  private readonly db: Database.Database;
  private pending: Pending[] = [];
  private readonly t0 = performance.now();

  private constructor(
    readonly path: string,
    db: Database.Database,
  ) {
    this.db = db;
  }

  /** Creates a new log at path (an existing file is refused: logs are evidence). */
  static create(
    path: string,
    role: 'source' | 'destination',
    npages: number,
    params: Record<string, unknown>,
  ): MigrationLog {
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (err) {
      throw new DatabaseFormatError(path, `cannot create the migration log (${(err as Error).message})`, {
        cause: err,
      });
    }
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
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec(SCHEMA);
    db.pragma(`application_id = ${MIGRATION_LOG_APP_ID}`);
    db.pragma(`user_version = ${MIGRATION_LOG_VERSION}`);
    db.prepare('INSERT INTO migration (id, started_at, role, npages, params) VALUES (1, ?, ?, ?, ?)').run(
      new Date().toISOString(),
      role,
      npages,
      JSON.stringify(params),
    );
    return new MigrationLog(path, db);
  }

  /** Records an event, optionally with the pages it concerns (and the perspective each was sent from). */
  event(
    kind: string,
    round: number,
    detail: Record<string, unknown> = {},
    gfns?: Float64Array,
    states?: Uint8Array,
  ): void {
    this.pending.push({
      t: performance.now() - this.t0,
      kind,
      round,
      detail: JSON.stringify(detail),
      gfns,
      states,
    });
  }

  /** The host's c-bit changes consumed by a sync, with their sequence numbers. */
  changes(list: Iterable<StateRange & { seq: number }>): void {
    const ins = this.db.prepare(
      'INSERT OR IGNORE INTO cbit_changes (seq, gfn, npages, encrypted) VALUES (?, ?, ?, ?)',
    );
    this.db.transaction(() => {
      for (const c of list) ins.run(c.seq, c.gfn, c.npages, c.encrypted ? 1 : 0);
    })();
  }

  /** Stores a named full state (serialized PageStateMap or bitmap). */
  state(name: string, bytes: Uint8Array): void {
    this.db
      .prepare('INSERT OR REPLACE INTO states (name, state) VALUES (?, ?)')
      .run(name, Buffer.from(bytes));
  }

  /** Writes the buffered events in one transaction. */
  flush(): void {
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    const insEvent = this.db.prepare('INSERT INTO events (t_ms, kind, round, detail) VALUES (?, ?, ?, ?)');
    const insPages = this.db.prepare('INSERT INTO page_sets (event_id, gfns, states) VALUES (?, ?, ?)');
    this.db.transaction(() => {
      for (const e of batch) {
        const id = insEvent.run(e.t, e.kind, e.round, e.detail).lastInsertRowid;
        if (e.gfns) insPages.run(id, gfnsToBlob(e.gfns), e.states ? Buffer.from(e.states) : null);
      }
    })();
  }

  close(result: Record<string, unknown>): void {
    if (!this.db.open) return;
    this.flush();
    this.db.prepare('UPDATE migration SET result = ? WHERE id = 1').run(JSON.stringify(result));
    this.db.close();
  }
}
