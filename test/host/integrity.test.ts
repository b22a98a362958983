import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { DatabaseFormatError } from '../../src/common/errors.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { checkDatabase } from '../../src/host/integrity.js';
import { checkpointCrc } from '../../src/host/segment-chain.js';
import { tempDir } from '../support/tmp.js';

function sampleDb(): string {
  const path = join(tempDir(), 'host.db');
  const store = CbitStore.open(path, { checkpointInterval: 8 });
  store.registerVm(1, 256);
  store.registerVm(2, 64, { initialEncrypted: false });
  for (let i = 0; i < 5; i++)
    store.applyBatch(1, [
      { gfn: i * 10, npages: 3, encrypted: false },
      { gfn: i, npages: 1, encrypted: true },
    ]);
  store.sync(1);
  store.applyBatch(2, [{ gfn: 1, npages: 2, encrypted: true }]);
  store.close();
  return path;
}

describe('checkDatabase (state --check)', () => {
  it('passes a sound database and counts what it read', () => {
    const report = checkDatabase(sampleDb());
    expect(report.ok).toBe(true);
    expect(report.sqlite).toEqual([]);
    expect(report.vms.map((v) => [v.vm, v.changes, v.segments, v.syncs, v.problems])).toEqual([
      [1, 10, 5, 1, []],
      [2, 1, 1, 0, []],
    ]);
  });

  it('names a checkpoint that differs from what the log rebuilds, a sync past the head, a change outside the guest', () => {
    const path = sampleDb();
    const raw = new Database(path);
    raw.prepare('INSERT INTO syncs (vm, seq, created_at) VALUES (2, 99, ?)').run('x');
    raw.close();
    // A checkpoint with a valid CRC but the wrong state: written through another store's serializer.
    const other = CbitStore.open(join(tempDir(), 'other.db'));
    other.registerVm(1, 256);
    const wrong = other.state(1).serialize();
    other.close();
    const raw2 = new Database(path);
    const top = raw2.prepare('SELECT max(seq) AS seq FROM checkpoints WHERE vm = 1').get() as { seq: number };
    raw2
      .prepare('UPDATE checkpoints SET state = ?, crc = ? WHERE vm = 1 AND seq = ?')
      .run(Buffer.from(wrong), checkpointCrc(1, top.seq, wrong), top.seq);
    raw2.close();
    const report = checkDatabase(path);
    expect(report.ok).toBe(false);
    expect(report.vms[0].problems.join('\n')).toMatch(
      `checkpoint at seq ${top.seq} differs from the state the change log rebuilds`,
    );
    expect(report.vms[1].problems.join('\n')).toMatch(/sync at seq 99 is past the head/);
    // Opening refuses the sync past the head too.
    expect(() => CbitStore.open(path)).toThrow(DatabaseFormatError);
  });

  it('refuses a file that is not a sevtrack database', () => {
    const path = join(tempDir(), 'foreign.db');
    const raw = new Database(path);
    raw.exec('CREATE TABLE t (x)');
    raw.close();
    expect(() => checkDatabase(path)).toThrow(/not a sevtrack database/);
    expect(() => checkDatabase(join(tempDir(), 'missing.db'))).toThrow(DatabaseFormatError);
  });
});

describe('schema v1 databases', () => {
  it('are migrated with their chain backfilled, and then pass the full check', () => {
    const path = join(tempDir(), 'v1.db');
    const raw = new Database(path);
    raw.exec(`
      CREATE TABLE vms (id INTEGER PRIMARY KEY, npages INTEGER NOT NULL, initial_encrypted INTEGER NOT NULL,
        migration_control INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
      CREATE TABLE change_segments (vm INTEGER NOT NULL REFERENCES vms(id), first_seq INTEGER NOT NULL,
        count INTEGER NOT NULL, records BLOB NOT NULL, PRIMARY KEY (vm, first_seq)) WITHOUT ROWID;
      CREATE TABLE syncs (vm INTEGER NOT NULL REFERENCES vms(id), seq INTEGER NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (vm, seq)) WITHOUT ROWID;
      CREATE TABLE checkpoints (vm INTEGER NOT NULL REFERENCES vms(id), seq INTEGER NOT NULL, state BLOB NOT NULL,
        PRIMARY KEY (vm, seq)) WITHOUT ROWID;
      CREATE TABLE migration_control_log (vm INTEGER NOT NULL REFERENCES vms(id), after_seq INTEGER NOT NULL,
        value INTEGER NOT NULL, at TEXT NOT NULL);
    `);
    raw.pragma('application_id = 0x53565452');
    raw.pragma('user_version = 1');
    // vm 1 of 16 pages, all encrypted; two segments: gfn 2 shared, then gfn 3..4 shared.
    const fresh = CbitStore.open(join(tempDir(), 'scratch.db'));
    fresh.registerVm(1, 16);
    const initial = Buffer.from(fresh.state(1).serialize());
    fresh.close();
    const rec = (gfn: number, npages: number) => {
      const b = Buffer.alloc(16);
      b.writeUInt32LE(gfn, 0);
      b.writeUInt32LE(npages, 8);
      return b;
    };
    raw.prepare("INSERT INTO vms VALUES (1, 16, 1, 0, 'x')").run();
    raw.prepare('INSERT INTO checkpoints VALUES (1, 0, ?)').run(initial);
    raw.prepare('INSERT INTO change_segments VALUES (1, 1, 1, ?)').run(rec(2, 1));
    raw.prepare('INSERT INTO change_segments VALUES (1, 2, 1, ?)').run(rec(3, 2));
    raw.close();
    const store = CbitStore.open(path);
    expect(store.info(1)).toMatchObject({ lastSeq: 2, sharedPages: 3 });
    store.close();
    expect(checkDatabase(path).ok).toBe(true);
  });
});
