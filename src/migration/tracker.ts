/**
 * What the migration source needs of the c-bit tracker (docs/design.md §3
 * rules 1 and 4): syncs, the counters that size what is left, and the
 * migration-control (READY) state. Two implementations satisfy it: the
 * in-process CbitStore itself (synchronous answers, no adapter, so the
 * in-process path costs what it did) and ServiceTracker (tracker-service.ts),
 * which asks a running `sevtrack serve`. Callers await every answer.
 *
 * Ordering: the source drains the guest's exit rings (SourceGuest.drainExits)
 * before each sync; the tracker commits what a sync consumed before it
 * answers (CbitStore.sync; the service answers SYNC after its group commit).
 */
import type { SyncResult } from '../host/cbit-store.js';
import type { PageStateMap } from '../host/page-state-map.js';

export type MaybePromise<T> = T | Promise<T>;

export interface Tracker {
  /** Takes a sync of vm: the delta since the previous sync and the full state at it. */
  sync(vm: number): MaybePromise<SyncResult>;
  /** The newest change and the newest sync of vm (changes not consumed yet = lastSeq - lastSyncSeq). */
  info(vm: number): MaybePromise<{ lastSeq: number; lastSyncSeq: number }>;
  /** The full state of vm and the seq of the newest change it holds, read together. */
  snapshot(vm: number): MaybePromise<{ state: PageStateMap; seq: number }>;
  /** MSR_KVM_MIGRATION_CONTROL of vm as the guest last wrote it. */
  migrationControl(vm: number): MaybePromise<bigint>;
}
