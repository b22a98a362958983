/**
 * The full integrity check of a host database (`sevtrack state --check`):
 * SQLite's own integrity_check, then per VM every change-log segment in order
 * (continuous sequence numbers, chained CRC, records inside the guest, the
 * head recorded in the vms row), every checkpoint (CRC, format, and equal to
 * the state the log rebuilds at its seq) and every sync (not past the head).
 * It reads the whole history; the service's start checks only what recovery
 * reads (change-log.ts).
 */
import Database from 'better-sqlite3';
import { DatabaseFormatError, SevtrackError } from '../common/errors.js';
import { ChangeLog, type SegmentRow } from './change-log.js';
import { forEachRecord } from './change-segment.js';
import { PageStateMap } from './page-state-map.js';
import { migrate } from './schema.js';
import { checkpointCrc } from './segment-chain.js';

export interface VmCheck {
  vm: number;
  segments: number;
  changes: number;
  checkpoints: number;
  syncs: number;
  /** One line per problem, naming the segment, checkpoint or sync; empty when the VM is sound. */
  problems: string[];
}

export interface IntegrityReport {
  path: string;
  ok: boolean;
  /** Problems SQLite's integrity_check reports (page-level damage). */
  sqlite: string[];
  vms: VmCheck[];
}

/**
 * Checks the database at path without writing to it. Throws
 * DatabaseFormatError only when the file is not a sevtrack database at all;
 * every other problem is reported.
 */
export function checkDatabase(path: string): IntegrityReport {
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new DatabaseFormatError(path, `cannot open (${(err as Error).message})`, { cause: err });
  }
  try {
    migrate(db, path, true);
    // One read transaction: every read below sees the same snapshot, so a
    // service committing meanwhile cannot make the heads and the segments
    // disagree (a false alarm).
    return db.transaction((): IntegrityReport => {
      const sqlite = (db.pragma('integrity_check') as { integrity_check: string }[])
        .map((r) => r.integrity_check)
        .filter((line) => line !== 'ok');
      const log = new ChangeLog(db, path);
      const rows = db.prepare('SELECT id, npages, head_seq, head_crc FROM vms ORDER BY id').all() as {
        id: number;
        npages: number;
        head_seq: number;
        head_crc: number;
      }[];
      const vms = rows.map((row) => checkVm(db, log, row));
      return { path, ok: sqlite.length === 0 && vms.every((v) => v.problems.length === 0), sqlite, vms };
    })();
  } finally {
    db.close();
  }
}

function checkVm(
  db: Database.Database,
  log: ChangeLog,
  row: { id: number; npages: number; head_seq: number; head_crc: number },
): VmCheck {
  const problems: string[] = [];
  const report = (err: unknown) =>
    problems.push(err instanceof SevtrackError ? err.message.replace(`${log.path}: `, '') : String(err));
  const checkpoints = db
    .prepare('SELECT seq, state, crc FROM checkpoints WHERE vm = ? ORDER BY seq')
    .all(row.id) as { seq: number; state: Buffer; crc: number }[];
  const wanted = new Map<number, PageStateMap>();
  for (const c of checkpoints) {
    if (checkpointCrc(row.id, c.seq, c.state) !== c.crc) {
      problems.push(`vm ${row.id}: the checkpoint at seq ${c.seq} fails its checksum`);
      continue;
    }
    try {
      wanted.set(c.seq, PageStateMap.deserialize(c.state));
    } catch (err) {
      report(err);
    }
  }
  const initial = wanted.get(0);
  if (!initial) problems.push(`vm ${row.id}: the initial checkpoint (seq 0) is missing or damaged`);
  const state = initial?.clone() ?? new PageStateMap(row.npages);
  let next = 1;
  let crc = 0;
  let segments = 0;
  const segs = db
    .prepare('SELECT first_seq, count, records, crc FROM change_segments WHERE vm = ? ORDER BY first_seq')
    .iterate(row.id) as IterableIterator<SegmentRow>;
  for (const seg of segs) {
    segments++;
    try {
      // A gap is reported once; the walk resynchronizes on the segment found.
      crc = log.checkSegment(row.id, seg, next, crc);
    } catch (err) {
      report(err);
      crc = seg.crc;
    }
    next = seg.first_seq + seg.count;
    try {
      forEachRecord(seg.records, seg.count, (gfn, npages, encrypted, i) => {
        if (gfn + npages > row.npages) {
          throw new DatabaseFormatError(
            log.path,
            `vm ${row.id}: change ${seg.first_seq + i} (gfn ${gfn} +${npages}) lies outside the guest's ${row.npages} pages`,
          );
        }
        state.apply(gfn, npages, encrypted);
      });
    } catch (err) {
      report(err);
    }
    const expected = wanted.get(next - 1);
    if (expected && !expected.equals(state)) {
      problems.push(
        `vm ${row.id}: the checkpoint at seq ${next - 1} differs from the state the change log rebuilds`,
      );
    }
  }
  if (next - 1 !== row.head_seq || crc !== row.head_crc) {
    problems.push(
      `vm ${row.id}: the change log ends at seq ${next - 1} (CRC 0x${crc.toString(16)}) but the head is seq ${row.head_seq} (CRC 0x${row.head_crc.toString(16)}): a segment is missing or altered`,
    );
  }
  for (const c of checkpoints) {
    if (c.seq > row.head_seq) problems.push(`vm ${row.id}: the checkpoint at seq ${c.seq} is past the head`);
  }
  const syncs = db.prepare('SELECT seq FROM syncs WHERE vm = ? ORDER BY seq').all(row.id) as {
    seq: number;
  }[];
  for (const s of syncs) {
    if (s.seq > row.head_seq) problems.push(`vm ${row.id}: the sync at seq ${s.seq} is past the head`);
  }
  return {
    vm: row.id,
    segments,
    changes: next - 1,
    checkpoints: checkpoints.length,
    syncs: syncs.length,
    problems,
  };
}
