/**
 * Syncs (docs/design.md §3 rules 1 and 4): a sync marks the sequence number up
 * to which the migration consumed changes and yields the ranges whose state
 * changed since the previous sync. Ordering: the caller commits every change
 * the sync covers in the same transaction as the sync row, before the sync is
 * answered; record() runs inside that transaction, advance() after it.
 */
import type Database from 'better-sqlite3';
import type { StateRange } from '../common/ranges.js';
import type { PageStateMap } from './page-state-map.js';
import { TouchedSet, type Vm } from './vm-state.js';

export interface SyncResult {
  /** The new sync's sequence number: every change up to it is consumed. */
  seq: number;
  previousSeq: number;
  /** Coalesced ranges whose state changed since the previous sync, with their new state. */
  delta: StateRange[];
  /** A consistent snapshot of the full state at seq (independent of later changes). */
  state: PageStateMap;
}

export class SyncTable {
  private readonly insert;
  private readonly last;

  constructor(db: Database.Database) {
    this.insert = db.prepare('INSERT OR IGNORE INTO syncs (vm, seq, created_at) VALUES (?, ?, ?)');
    this.last = db.prepare('SELECT max(seq) AS seq FROM syncs WHERE vm = ?');
  }

  /** Writes the sync row (inside the caller's transaction). */
  record(vmId: number, seq: number): void {
    this.insert.run(vmId, seq, new Date().toISOString());
  }

  /** The newest sync's seq (0 = none yet). */
  lastSyncSeq(vmId: number): number {
    return (this.last.get(vmId) as { seq: number | null }).seq ?? 0;
  }
}

/**
 * A windowed diff costs about this many times more per touched window (the
 * windows merged, two tree lookups each) than a full diff per range of the
 * two maps (a merge walk): 30-55 ms for 81k windows against 6-12 ms for a
 * full diff of 107-278k + 107-234k ranges (64 GiB guest, 100k changes).
 */
const WINDOW_COST_IN_RANGES = 20;

/**
 * Moves vm's sync point to its newest change, once the sync row is durable;
 * returns the delta against the previous sync. The cost is the ranges inside
 * the frames touched since the previous sync, not the guest's size; when so
 * many changes came in that walking both maps whole is cheaper, it does that
 * (`windowCost`: a touched window's cost in ranges of a full walk; tests pin
 * one path with 0 or Infinity).
 */
export function advanceSync(vm: Vm, windowCost = WINDOW_COST_IN_RANGES): SyncResult {
  const previousSeq = vm.lastSyncSeq;
  const seq = vm.lastSeq;
  const walkAll = vm.touched.count * windowCost >= vm.lastSyncState.rangeCount + vm.state.rangeCount;
  const delta = vm.lastSyncState.diff(vm.state, walkAll ? undefined : vm.touched.windows());
  vm.lastSyncSeq = seq;
  vm.lastSyncState = vm.state.clone();
  vm.touched = new TouchedSet(vm.npages);
  return { seq, previousSeq, delta, state: vm.state.clone() };
}
