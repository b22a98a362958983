/**
 * The host database schema and its forward migrations. The version lives in
 * PRAGMA user_version; PRAGMA application_id marks the file as sevtrack's so a
 * foreign SQLite database is never written to.
 */
import type Database from 'better-sqlite3';
import { DatabaseFormatError } from '../common/errors.js';
import { checkpointCrc, segmentCrc } from './segment-chain.js';

/** "SVTR" */
export const APPLICATION_ID = 0x5356_5452;

/** Migration i (0-based) takes the schema from version i to version i + 1: SQL, or a function for backfills. */
const MIGRATIONS: readonly (string | ((db: Database.Database) => void))[] = [
  `
  CREATE TABLE vms (
    id INTEGER PRIMARY KEY,
    npages INTEGER NOT NULL,
    initial_encrypted INTEGER NOT NULL,
    migration_control INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
  );
  -- The change log in segments: one row per committed batch of changes of one
  -- VM, records packed as docs/formats.md "change-log segment" describes.
  -- Change i of a segment has sequence number first_seq + i.
  CREATE TABLE change_segments (
    vm INTEGER NOT NULL REFERENCES vms(id),
    first_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    records BLOB NOT NULL,
    PRIMARY KEY (vm, first_seq)
  ) WITHOUT ROWID;
  -- A sync: the migration consumed every change up to seq.
  CREATE TABLE syncs (
    vm INTEGER NOT NULL REFERENCES vms(id),
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm, seq)
  ) WITHOUT ROWID;
  -- The full state at seq (PageStateMap.serialize), so recovery and stateAt
  -- replay only the log after the nearest checkpoint.
  CREATE TABLE checkpoints (
    vm INTEGER NOT NULL REFERENCES vms(id),
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (vm, seq)
  ) WITHOUT ROWID;
  -- Migration-control MSR writes, in order, for replay.
  CREATE TABLE migration_control_log (
    vm INTEGER NOT NULL REFERENCES vms(id),
    after_seq INTEGER NOT NULL,
    value INTEGER NOT NULL,
    at TEXT NOT NULL
  );
  `,
  // v2: integrity (docs/host-protocol.md "Persistence"). Every segment carries a
  // CRC-32 chained over the previous segment's, every checkpoint its own, and
  // the vms row the head of the chain, so a deleted, reordered or edited
  // segment or checkpoint is detected.
  (db) => {
    db.exec(`
      ALTER TABLE change_segments ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE checkpoints ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE vms ADD COLUMN head_seq INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE vms ADD COLUMN head_crc INTEGER NOT NULL DEFAULT 0;
    `);
    const setSeg = db.prepare('UPDATE change_segments SET crc = ? WHERE vm = ? AND first_seq = ?');
    const setCkpt = db.prepare('UPDATE checkpoints SET crc = ? WHERE vm = ? AND seq = ?');
    const setHead = db.prepare('UPDATE vms SET head_seq = ?, head_crc = ? WHERE id = ?');
    for (const { id } of db.prepare('SELECT id FROM vms').all() as { id: number }[]) {
      let crc = 0;
      let head = 0;
      const segs = db
        .prepare('SELECT first_seq, count, records FROM change_segments WHERE vm = ? ORDER BY first_seq')
        .all(id) as { first_seq: number; count: number; records: Buffer }[];
      for (const s of segs) {
        crc = segmentCrc(crc, id, s.first_seq, s.count, s.records);
        head = s.first_seq + s.count - 1;
        setSeg.run(crc, id, s.first_seq);
      }
      setHead.run(head, crc, id);
      const ckpts = db.prepare('SELECT seq, state FROM checkpoints WHERE vm = ?').all(id) as {
        seq: number;
        state: Buffer;
      }[];
      for (const c of ckpts) setCkpt.run(checkpointCrc(id, c.seq, c.state), id, c.seq);
    }
  },
  // v3: migration records (migration-records.ts, docs/host-protocol.md
  // MIGRATION_BEGIN / MIGRATION_END): where each migration of a VM went, the
  // syncs it took and its outcome (NULL while open).
  `
  CREATE TABLE migrations (
    id INTEGER PRIMARY KEY,
    vm INTEGER NOT NULL REFERENCES vms(id),
    destination TEXT NOT NULL,
    started_at TEXT NOT NULL,
    start_seq INTEGER NOT NULL,
    ended_at TEXT,
    outcome TEXT,
    message TEXT
  );
  CREATE INDEX migrations_by_vm ON migrations (vm);
  CREATE TABLE migration_syncs (
    migration INTEGER NOT NULL REFERENCES migrations(id),
    n INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (migration, n)
  ) WITHOUT ROWID;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Checks that `db` is empty or a sevtrack database no newer than this code,
 * and applies the missing migrations in one transaction. Throws
 * DatabaseFormatError (and changes nothing) otherwise.
 */
export function migrate(db: Database.Database, path: string, readonly: boolean): void {
  let appId: number;
  let version: number;
  let tables: number;
  try {
    appId = db.pragma('application_id', { simple: true }) as number;
    version = db.pragma('user_version', { simple: true }) as number;
    tables = (
      db.prepare("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table'").get() as { n: number }
    ).n;
  } catch (err) {
    throw new DatabaseFormatError(
      path,
      `not an SQLite database (${(err as Error).message}); pass a sevtrack database or a new path`,
      {
        cause: err,
      },
    );
  }
  if (appId !== APPLICATION_ID && !(appId === 0 && tables === 0)) {
    throw new DatabaseFormatError(
      path,
      `not a sevtrack database (application_id 0x${appId.toString(16)}, ${tables} tables); pass a sevtrack database or a new path`,
    );
  }
  if (version > SCHEMA_VERSION) {
    throw new DatabaseFormatError(
      path,
      `schema version ${version} is newer than this sevtrack supports (${SCHEMA_VERSION}); upgrade sevtrack`,
    );
  }
  if (version === SCHEMA_VERSION) return;
  if (readonly) {
    throw new DatabaseFormatError(
      path,
      `schema version ${version} needs migrating to ${SCHEMA_VERSION}; open it read-write once`,
    );
  }
  db.transaction(() => {
    for (let v = version; v < SCHEMA_VERSION; v++) {
      const step = MIGRATIONS[v];
      if (typeof step === 'string') db.exec(step);
      else step(db);
    }
    db.pragma(`application_id = ${APPLICATION_ID}`);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  })();
}
