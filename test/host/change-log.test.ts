/**
 * Recovery checks what it reads (src/host/change-log.ts): each way of
 * damaging the part of the log a restart reads is refused with a
 * DatabaseFormatError naming the piece, and nothing is written.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { DatabaseFormatError } from '../../src/common/errors.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { tempDir } from '../support/tmp.js';

/** A crash image: vm 1 with segments 1..3, 4..6, 7..9 and only the initial checkpoint. */
function crashed(): string {
  const path = join(tempDir(), 'host.db');
  const store = CbitStore.open(path);
  store.registerVm(1, 64);
  for (let s = 0; s < 3; s++) {
    store.applyBatch(
      1,
      [0, 1, 2].map((i) => ({ gfn: s * 10 + i, npages: 1, encrypted: false })),
    );
  }
  // No close(): a clean close would checkpoint the head.
  (store as unknown as { db: Database.Database }).db.close();
  return path;
}

function edit(path: string, sql: string, ...args: unknown[]): void {
  const db = new Database(path);
  db.prepare(sql).run(...args);
  db.close();
}

function refused(path: string): string {
  try {
    CbitStore.open(path);
  } catch (err) {
    expect(err).toBeInstanceOf(DatabaseFormatError);
    return (err as Error).message;
  }
  throw new Error('opened a damaged database');
}

describe('recovery refuses a damaged log', () => {
  it('a sound crash image recovers every committed change', () => {
    const store = CbitStore.open(crashed());
    expect(store.info(1)).toMatchObject({ lastSeq: 9, sharedPages: 9 });
    store.close();
  });

  it('a missing initial checkpoint', () => {
    const path = crashed();
    edit(path, 'DELETE FROM checkpoints');
    expect(refused(path)).toMatch(/vm 1: no checkpoint at or before seq 9/);
  });

  it('an altered chain head', () => {
    const path = crashed();
    edit(path, 'UPDATE vms SET head_crc = head_crc + 1');
    expect(refused(path)).toMatch(/the change log ends at seq 9 \(CRC 0x[0-9a-f]+\) but the head is seq 9/);
  });

  it('a head moved back into a segment', () => {
    const path = crashed();
    edit(path, 'UPDATE vms SET head_seq = 8');
    expect(refused(path)).toMatch(/ends at seq 9 .* head is seq 8/);
  });

  it('the segment a checkpoint chains from is gone', () => {
    const path = join(tempDir(), 'host.db');
    const store = CbitStore.open(path, { checkpointInterval: 3 });
    store.registerVm(1, 64);
    // A state of at most three ranges: a checkpoint every three changes (seq 3, 6, 9).
    for (let s = 0; s < 3; s++) {
      store.applyBatch(
        1,
        [false, true, false].map((encrypted) => ({ gfn: 1, npages: 1, encrypted })),
      );
    }
    (store as unknown as { db: Database.Database }).db.close();
    edit(path, 'DELETE FROM change_segments WHERE first_seq = 7');
    expect(refused(path)).toMatch(/the change-log segment ending at seq 9 is missing/);
  });
});
