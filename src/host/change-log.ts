/**
 * The durable change log of every VM (docs/design.md §3 rule 1, §6): segments
 * of committed changes with continuous sequence numbers, each with a CRC-32
 * chained over the previous one (segment-chain.ts), and checkpoints of the
 * full state so a replay starts near its target. Only CbitStore writes here,
 * inside its transactions. Every read used for recovery checks what it reads:
 * the checkpoint's CRC, the continuity of the sequence numbers and the chain.
 */
import type Database from 'better-sqlite3';
import { DatabaseFormatError } from '../common/errors.js';
import type { StateRange } from '../common/ranges.js';
import { forEachRecord } from './change-segment.js';
import { PageStateMap } from './page-state-map.js';
import { checkpointCrc, segmentCrc } from './segment-chain.js';

export interface SegmentRow {
  first_seq: number;
  count: number;
  records: Buffer;
  crc: number;
}

/** Where a VM's chain ends: its newest committed change and that segment's CRC. */
export interface ChainHead {
  seq: number;
  crc: number;
}

export class ChangeLog {
  private readonly stmts;

  constructor(
    db: Database.Database,
    readonly path: string,
  ) {
    this.stmts = {
      insertSegment: db.prepare(
        'INSERT INTO change_segments (vm, first_seq, count, records, crc) VALUES (?, ?, ?, ?, ?)',
      ),
      setHead: db.prepare('UPDATE vms SET head_seq = ?, head_crc = ? WHERE id = ?'),
      head: db.prepare('SELECT head_seq AS seq, head_crc AS crc FROM vms WHERE id = ?'),
      insertCheckpoint: db.prepare(
        'INSERT OR REPLACE INTO checkpoints (vm, seq, state, crc) VALUES (?, ?, ?, ?)',
      ),
      pruneCheckpoints: db.prepare('DELETE FROM checkpoints WHERE vm = ? AND seq > ? AND seq < ?'),
      checkpointAtOrBefore: db.prepare(
        'SELECT seq, state, crc FROM checkpoints WHERE vm = ? AND seq <= ? ORDER BY seq DESC LIMIT 1',
      ),
      segmentEndingAt: db.prepare(
        'SELECT crc, first_seq + count - 1 AS last FROM change_segments WHERE vm = ? AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1',
      ),
      segmentsAfter: db.prepare(
        'SELECT first_seq, count, records, crc FROM change_segments WHERE vm = ? AND first_seq > ? AND first_seq <= ? ORDER BY first_seq',
      ),
      segmentsOverlapping: db.prepare(
        'SELECT first_seq, count, records, crc FROM change_segments WHERE vm = ? AND first_seq + count > ? AND first_seq <= ? ORDER BY first_seq',
      ),
    };
  }

  /**
   * Appends the segment of changes after head (inside the caller's
   * transaction) and moves the VM's chain head; returns the new head.
   */
  append(vmId: number, head: ChainHead, count: number, records: Buffer): ChainHead {
    const crc = segmentCrc(head.crc, vmId, head.seq + 1, count, records);
    this.stmts.insertSegment.run(vmId, head.seq + 1, count, records, crc);
    const next = { seq: head.seq + count, crc };
    this.stmts.setHead.run(next.seq, next.crc, vmId);
    return next;
  }

  /** The chain head recorded in the vms row. */
  head(vmId: number): ChainHead {
    return this.stmts.head.get(vmId) as ChainHead;
  }

  /**
   * Records the full state after change seq (inside the caller's
   * transaction) and drops the checkpoints strictly between keepFrom and seq,
   * which nothing needs any more (keepFrom is the one recovery replays the
   * last sync's state from).
   */
  checkpoint(vmId: number, seq: number, state: PageStateMap, keepFrom = seq): void {
    const bytes = state.serialize();
    this.stmts.insertCheckpoint.run(vmId, seq, bytes, checkpointCrc(vmId, seq, bytes));
    if (keepFrom < seq) this.stmts.pruneCheckpoints.run(vmId, keepFrom, seq);
  }

  /** The seq of the newest checkpoint at or before seq (0 when only the initial one). */
  checkpointSeqAtOrBefore(vmId: number, seq: number): number {
    return (this.stmts.checkpointAtOrBefore.get(vmId, seq) as { seq: number } | undefined)?.seq ?? 0;
  }

  private corrupt(vmId: number, what: string): DatabaseFormatError {
    return new DatabaseFormatError(
      this.path,
      `vm ${vmId}: ${what}; the database was changed outside sevtrack (run \`sevtrack state --check --db ${this.path}\` for the full check)`,
    );
  }

  /**
   * The committed state of a VM at seq: the newest checkpoint at or before it
   * plus the log up to seq, checking the checkpoint's CRC and the chain of
   * every segment read. onSeq, if given, sees the state after each seq (and
   * after the checkpoint's own seq). With `head`, the segments read must end
   * exactly at it. Throws DatabaseFormatError naming the first bad piece.
   */
  replay(
    vmId: number,
    seq: number,
    onSeq?: (seq: number, state: PageStateMap) => void,
    head?: ChainHead,
  ): PageStateMap {
    const ckpt = this.stmts.checkpointAtOrBefore.get(vmId, seq) as
      | { seq: number; state: Buffer; crc: number }
      | undefined;
    if (!ckpt) throw this.corrupt(vmId, `no checkpoint at or before seq ${seq}`);
    if (checkpointCrc(vmId, ckpt.seq, ckpt.state) !== ckpt.crc) {
      throw this.corrupt(vmId, `the checkpoint at seq ${ckpt.seq} fails its checksum`);
    }
    const state = PageStateMap.deserialize(ckpt.state);
    onSeq?.(ckpt.seq, state);
    let crc = ckpt.seq === 0 ? 0 : this.crcEndingAt(vmId, ckpt.seq);
    let next = ckpt.seq + 1;
    for (const seg of this.stmts.segmentsAfter.iterate(vmId, ckpt.seq, seq) as IterableIterator<SegmentRow>) {
      crc = this.checkSegment(vmId, seg, next, crc);
      next = seg.first_seq + seg.count;
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
    if (next <= seq) {
      throw this.corrupt(
        vmId,
        `the change log ends at seq ${next - 1}, expected ${seq}: segment(s) for seq ${next}..${seq} are missing`,
      );
    }
    if (head && (next - 1 !== head.seq || crc !== head.crc)) {
      throw this.corrupt(
        vmId,
        `the change log ends at seq ${next - 1} (CRC 0x${crc.toString(16)}) but the head is seq ${head.seq} (CRC 0x${head.crc.toString(16)}): a segment is missing or altered`,
      );
    }
    return state;
  }

  /** The stored CRC of the segment that ends at seq (the chain's seed after a checkpoint at seq). */
  private crcEndingAt(vmId: number, seq: number): number {
    const row = this.stmts.segmentEndingAt.get(vmId, seq) as { crc: number; last: number } | undefined;
    if (!row || row.last !== seq)
      throw this.corrupt(vmId, `the change-log segment ending at seq ${seq} is missing`);
    return row.crc;
  }

  /** Checks one segment against the expected first seq and chain; returns its CRC. */
  checkSegment(vmId: number, seg: SegmentRow, expectedFirst: number, prevCrc: number): number {
    const where = `change-log segment at seq ${seg.first_seq}..${seg.first_seq + seg.count - 1}`;
    if (seg.first_seq !== expectedFirst) {
      throw this.corrupt(
        vmId,
        `${where} follows seq ${expectedFirst - 1}: segment(s) for seq ${expectedFirst}..${seg.first_seq - 1} are missing`,
      );
    }
    const crc = segmentCrc(prevCrc, vmId, seg.first_seq, seg.count, seg.records);
    if (crc !== seg.crc) throw this.corrupt(vmId, `${where} fails its checksum`);
    return crc;
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
