/**
 * The durable change log of every VM (docs/design.md §3 rule 1, §6): segments
 * of committed changes with continuous sequence numbers, and checkpoints of
 * the full state so a replay starts near its target. Only CbitStore writes
 * here, inside its transactions.
 */
import type Database from 'better-sqlite3';
import { RuntimeFailure } from '../common/errors.js';
import type { StateRange } from '../common/ranges.js';
import { forEachRecord } from './change-segment.js';
import { PageStateMap } from './page-state-map.js';

interface SegmentRow {
  first_seq: number;
  count: number;
  records: Buffer;
}

export class ChangeLog {
  private readonly stmts;

  constructor(
    private readonly db: Database.Database,
    private readonly path: string,
  ) {
    this.stmts = {
      insertSegment: db.prepare(
        'INSERT INTO change_segments (vm, first_seq, count, records) VALUES (?, ?, ?, ?)',
      ),
      insertCheckpoint: db.prepare('INSERT OR REPLACE INTO checkpoints (vm, seq, state) VALUES (?, ?, ?)'),
      checkpointAtOrBefore: db.prepare(
        'SELECT seq, state FROM checkpoints WHERE vm = ? AND seq <= ? ORDER BY seq DESC LIMIT 1',
      ),
      segmentsAfter: db.prepare(
        'SELECT first_seq, count, records FROM change_segments WHERE vm = ? AND first_seq > ? AND first_seq <= ? ORDER BY first_seq',
      ),
      segmentsOverlapping: db.prepare(
        'SELECT first_seq, count, records FROM change_segments WHERE vm = ? AND first_seq + count > ? AND first_seq <= ? ORDER BY first_seq',
      ),
      lastSeq: db.prepare('SELECT max(first_seq + count - 1) AS seq FROM change_segments WHERE vm = ?'),
    };
  }

  /** Appends the segment of changes firstSeq .. firstSeq + count - 1 (inside the caller's transaction). */
  append(vmId: number, firstSeq: number, count: number, records: Buffer): void {
    this.stmts.insertSegment.run(vmId, firstSeq, count, records);
  }

  /** Records the full state after change seq (inside the caller's transaction). */
  checkpoint(vmId: number, seq: number, state: PageStateMap): void {
    this.stmts.insertCheckpoint.run(vmId, seq, state.serialize());
  }

  /** The newest change in the log (0 = none). */
  lastSeq(vmId: number): number {
    return (this.stmts.lastSeq.get(vmId) as { seq: number | null }).seq ?? 0;
  }

  /** The seq of the newest checkpoint at or before seq (0 when only the initial one). */
  checkpointSeqAtOrBefore(vmId: number, seq: number): number {
    return (this.stmts.checkpointAtOrBefore.get(vmId, seq) as { seq: number } | undefined)?.seq ?? 0;
  }

  /**
   * The committed state of a VM at seq: the newest checkpoint at or before it
   * plus the log up to seq. onSeq, if given, sees the state after each seq
   * (and after the checkpoint's own seq).
   */
  replay(vmId: number, seq: number, onSeq?: (seq: number, state: PageStateMap) => void): PageStateMap {
    const ckpt = this.stmts.checkpointAtOrBefore.get(vmId, seq) as { seq: number; state: Buffer } | undefined;
    if (!ckpt)
      throw new RuntimeFailure(
        'ERR_DB_CORRUPT',
        `${this.path}: vm ${vmId} has no checkpoint at or before seq ${seq}`,
      );
    const state = PageStateMap.deserialize(ckpt.state);
    onSeq?.(ckpt.seq, state);
    for (const seg of this.stmts.segmentsAfter.iterate(vmId, ckpt.seq, seq) as IterableIterator<SegmentRow>) {
      forEachRecord(
        seg.records,
        seg.count,
        (gfn, npages, encrypted, i) => {
          state.apply(gfn, npages, encrypted);
          onSeq?.(seg.first_seq + i, state);
        },
        seq - seg.first_seq + 1,
      );
    }
    return state;
  }

  /** The committed changes with sequence numbers in (afterSeq, uptoSeq], in order. */
  *changes(vmId: number, afterSeq: number, uptoSeq: number): IterableIterator<StateRange & { seq: number }> {
    const rows = this.stmts.segmentsOverlapping.all(vmId, afterSeq + 1, uptoSeq) as SegmentRow[];
    for (const seg of rows) {
      const out: (StateRange & { seq: number })[] = [];
      forEachRecord(seg.records, seg.count, (gfn, npages, encrypted, i) => {
        const seq = seg.first_seq + i;
        if (seq > afterSeq && seq <= uptoSeq) out.push({ seq, gfn, npages, encrypted });
      });
      yield* out;
    }
  }
}
