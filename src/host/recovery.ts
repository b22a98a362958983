/**
 * Recovery (docs/design.md §6): rebuilds a VM's in-memory record from the
 * database after a restart or a failed commit: the state at the newest
 * committed change (the chain head of the vms row) and the snapshot at the
 * last sync, each from the nearest checkpoint plus the log after it.
 * Checkpoints are taken continuously (CbitStore.commit), so each replay reads
 * a bounded tail of the log whatever the number of changes since the last
 * sync, and it checks exactly what it reads (change-log.ts): the quick
 * integrity check at start.
 */
import { DatabaseFormatError } from '../common/errors.js';
import type { ChangeLog } from './change-log.js';
import type { PageStateMap } from './page-state-map.js';
import type { SyncTable } from './syncs.js';
import { newVm, TouchedSet, type Vm } from './vm-state.js';

export interface VmRow {
  id: number;
  npages: number;
  initial_encrypted: number;
  migration_control: number | bigint;
}

/** The VM of row, rebuilt from its checkpoints and log; exactly the committed state. */
export function recoverVm(log: ChangeLog, syncs: SyncTable, row: VmRow): Vm {
  const lastSyncSeq = syncs.lastSyncSeq(row.id);
  const head = log.head(row.id);
  const lastSeq = head.seq;
  if (lastSyncSeq > lastSeq) {
    throw new DatabaseFormatError(
      log.path,
      `vm ${row.id}: sync at seq ${lastSyncSeq} is past the newest change ${lastSeq}; the database was changed outside sevtrack`,
    );
  }
  let syncState: PageStateMap | undefined;
  const state = log.replay(
    row.id,
    lastSeq,
    (seq, s) => {
      if (seq === lastSyncSeq) syncState = s.clone();
    },
    head,
  );
  return newVm({
    id: row.id,
    npages: row.npages,
    initialEncrypted: row.initial_encrypted === 1,
    migrationControl: BigInt(row.migration_control),
    state,
    lastSeq,
    headCrc: head.crc,
    lastSyncSeq,
    lastSyncState: syncState ?? log.replay(row.id, lastSyncSeq),
    // The frames touched since the last sync are not recorded: the next sync diffs all.
    touched: new TouchedSet(row.npages, lastSeq !== lastSyncSeq),
    checkpointSeq: log.checkpointSeqAtOrBefore(row.id, lastSeq),
  });
}
