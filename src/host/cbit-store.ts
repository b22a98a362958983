/**
 * CbitStore: the host's durable record of every guest's c-bit state
 * (docs/design.md §3 rule 1, §6). Per VM it keeps, in memory, the full state as a
 * PageStateMap (vm-state.ts) and, in SQLite (WAL), the append-only change log
 * with monotonically increasing sequence numbers and checkpoints of the full
 * state (change-log.ts), syncs (syncs.ts) and the migration-control (READY)
 * state. recovery.ts rebuilds the memory side from the database.
 *
 * Durability contract: a change applied with applyChange/applyHypercall is
 * durable once commit() returns; callers acknowledge changes to guests only
 * after that (group commit). sync() commits first, so every change a guest
 * was told about is in the log before the next sync is answered. After a
 * crash, open() rebuilds exactly the committed state.
 */
import Database from 'better-sqlite3';
import {
  DatabaseFormatError,
  InvalidArgumentError,
  RuntimeFailure,
  UnknownVmError,
} from '../common/errors.js';
import {
  type DecodeResult,
  decodeHypercall,
  decodeHypercallAt,
  type GpaRangeChange,
  KVM_MIGRATION_READY,
} from '../common/kvm-abi.js';
import type { StateRange } from '../common/ranges.js';
import { ChangeLog } from './change-log.js';
import { type MigrationOutcome, type MigrationRecord, MigrationTable } from './migration-records.js';
import { PageStateMap } from './page-state-map.js';
import { recoverVm, type VmRow } from './recovery.js';
import { migrate } from './schema.js';
import { advanceSync, type SyncResult, SyncTable } from './syncs.js';
import { checkRegistration, type HypercallOutcome, newVm, type Vm, type VmInfo, vmInfo } from './vm-state.js';

export type { MigrationOutcome, MigrationRecord } from './migration-records.js';
export type { SyncResult } from './syncs.js';
export { type HypercallOutcome, touchedWindows, type VmInfo } from './vm-state.js';

/**
 * Take a checkpoint of the full state once this many changes accumulated since
 * the last one (or the state's range count, if larger, so the cost of
 * serializing stays O(1) per change). Bounds what recovery replays.
 */
const DEFAULT_CHECKPOINT_INTERVAL = 65_536;
/** The migration-control MSR bits a guest may set (KVM rejects others). */
const MIGRATION_CONTROL_VALID = KVM_MIGRATION_READY;

export interface OpenOptions {
  readonly?: boolean;
  /** SQLite synchronous level: FULL (default) survives power loss; NORMAL survives a process crash. */
  synchronous?: 'FULL' | 'NORMAL';
  /** Changes between checkpoints of the full state (taken at commits and syncs); bounds recovery's replay. */
  checkpointInterval?: number;
}

export class CbitStore {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly vmsById = new Map<number, Vm>();
  private readonly log: ChangeLog;
  private readonly syncs: SyncTable;
  private readonly migrations: MigrationTable;
  private readonly stmts;
  private readonly checkpointInterval: number;

  private constructor(path: string, db: Database.Database, checkpointInterval: number) {
    this.path = path;
    this.db = db;
    this.checkpointInterval = checkpointInterval;
    this.log = new ChangeLog(db, path);
    this.syncs = new SyncTable(db);
    this.migrations = new MigrationTable(db, db.readonly);
    this.stmts = {
      insertVm: db.prepare(
        'INSERT INTO vms (id, npages, initial_encrypted, migration_control, created_at) VALUES (?, ?, ?, 0, ?)',
      ),
      setControl: db.prepare('UPDATE vms SET migration_control = ? WHERE id = ?'),
      logControl: db.prepare(
        'INSERT INTO migration_control_log (vm, after_seq, value, at) VALUES (?, ?, ?, ?)',
      ),
      vmRow: db.prepare('SELECT id, npages, initial_encrypted, migration_control FROM vms WHERE id = ?'),
      vmRows: db.prepare('SELECT id, npages, initial_encrypted, migration_control FROM vms ORDER BY id'),
    };
  }

  /**
   * Opens (creating if needed) the database at path and rebuilds every VM's
   * state from it. Throws DatabaseFormatError for a file that is not SQLite,
   * not sevtrack's, or of a newer schema; nothing is written to such a file.
   */
  static open(path: string, options: OpenOptions = {}): CbitStore {
    let db: Database.Database;
    try {
      db = new Database(path, {
        readonly: options.readonly ?? false,
        fileMustExist: options.readonly ?? false,
      });
    } catch (err) {
      throw new DatabaseFormatError(path, `cannot open (${(err as Error).message})`, { cause: err });
    }
    try {
      migrate(db, path, options.readonly ?? false);
      if (!options.readonly) {
        db.pragma('journal_mode = WAL');
        db.pragma(`synchronous = ${options.synchronous ?? 'FULL'}`);
      }
      db.pragma('foreign_keys = ON');
      const store = new CbitStore(path, db, options.checkpointInterval ?? DEFAULT_CHECKPOINT_INTERVAL);
      for (const row of store.stmts.vmRows.all() as VmRow[]) store.vmsById.set(row.id, store.recover(row));
      return store;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /**
   * Commits, checkpoints every VM at its newest change and folds the WAL into
   * the database, then closes: the next open replays nothing.
   */
  close(): void {
    if (!this.db.open) return;
    if (!this.db.readonly) {
      this.commit();
      this.db.transaction(() => {
        for (const vm of this.vmsById.values()) {
          if (vm.lastSeq > vm.checkpointSeq) this.checkpointVm(vm);
        }
      })();
      this.db.pragma('wal_checkpoint(TRUNCATE)');
    }
    this.db.close();
  }

  /** Checkpoints vm at its newest committed change (inside a transaction). */
  private checkpointVm(vm: Vm): void {
    const keepFrom = this.log.checkpointSeqAtOrBefore(vm.id, vm.lastSyncSeq);
    this.log.checkpoint(vm.id, vm.committedSeq, vm.state, keepFrom);
  }

  private recover(row: VmRow): Vm {
    return recoverVm(this.log, this.syncs, row);
  }

  private vm(id: number): Vm {
    const vm = this.vmsById.get(id);
    if (!vm) throw new UnknownVmError(id);
    return vm;
  }

  /**
   * Registers a VM of npages 4 KiB frames, all encrypted unless
   * initialEncrypted is false. Durable on return.
   */
  registerVm(id: number, npages: number, options: { initialEncrypted?: boolean } = {}): VmInfo {
    checkRegistration(id, npages);
    if (this.vmsById.has(id)) {
      throw new InvalidArgumentError('vm', `vm ${id} is already registered; pick another id`);
    }
    const initialEncrypted = options.initialEncrypted ?? true;
    const state = new PageStateMap(npages, initialEncrypted);
    this.db.transaction(() => {
      this.stmts.insertVm.run(id, npages, initialEncrypted ? 1 : 0, new Date().toISOString());
      this.log.checkpoint(id, 0, state);
    })();
    this.registered(id, npages, initialEncrypted, state);
    return this.info(id);
  }

  private registered(id: number, npages: number, initialEncrypted: boolean, state: PageStateMap): void {
    this.vmsById.set(
      id,
      newVm({
        id,
        npages,
        initialEncrypted,
        migrationControl: 0n,
        state,
        lastSeq: 0,
        lastSyncSeq: 0,
        lastSyncState: state.clone(),
        checkpointSeq: 0,
      }),
    );
  }

  /**
   * Forgets a VM: commits its pending changes, then deletes its state, log,
   * checkpoints, syncs and migration-control record in one transaction. The
   * id may be registered again afterwards. Durable on return.
   */
  unregisterVm(id: number): void {
    this.vm(id);
    this.commit();
    this.db.transaction(() => {
      this.migrations.deleteVm(id);
      for (const table of ['migration_control_log', 'syncs', 'checkpoints', 'change_segments']) {
        this.db.prepare(`DELETE FROM ${table} WHERE vm = ?`).run(id);
      }
      this.db.prepare('DELETE FROM vms WHERE id = ?').run(id);
    })();
    this.vmsById.delete(id);
  }

  hasVm(id: number): boolean {
    return this.vmsById.has(id);
  }

  vmIds(): number[] {
    return [...this.vmsById.keys()];
  }

  info(id: number): VmInfo {
    return vmInfo(this.vm(id));
  }

  /**
   * Applies a decoded change to the in-memory state and the pending batch;
   * returns its sequence number. Durable only after commit().
   */
  applyChange(vmId: number, change: Pick<GpaRangeChange, 'gfn' | 'npages' | 'encrypted'>): number {
    const vm = this.vm(vmId);
    vm.state.apply(change.gfn, change.npages, change.encrypted);
    vm.pending.push(change.gfn, change.npages, change.encrypted);
    vm.touched.add(change.gfn, change.npages);
    vm.lastSeq++;
    return vm.lastSeq;
  }

  /**
   * Decodes a KVM_HC_MAP_GPA_RANGE hypercall and applies it. A rejected
   * hypercall changes nothing and returns the KVM error code. Durable only
   * after commit().
   */
  applyHypercall(
    vmId: number,
    nr: bigint | number,
    a0: bigint | number,
    a1: bigint | number,
    a2: bigint | number,
  ): HypercallOutcome {
    return this.applyDecoded(vmId, decodeHypercall(nr, a0, a1, a2, this.vm(vmId).npages));
  }

  /** applyHypercall for (nr, a0, a1, a2) as four little-endian u64 at offset of buf (a wire frame). */
  applyHypercallAt(vmId: number, buf: Buffer, offset: number): HypercallOutcome {
    return this.applyDecoded(vmId, decodeHypercallAt(buf, offset, this.vm(vmId).npages));
  }

  private applyDecoded(vmId: number, decoded: DecodeResult): HypercallOutcome {
    if (!decoded.ok) return { ret: decoded.ret, field: decoded.field, message: decoded.message };
    return { ret: 0, seq: this.applyChange(vmId, decoded.change), change: decoded.change };
  }

  /** Applies a batch of changes and commits it; returns their sequence numbers. */
  applyBatch(
    vmId: number,
    changes: readonly Pick<GpaRangeChange, 'gfn' | 'npages' | 'encrypted'>[],
  ): number[] {
    const seqs = changes.map((c) => this.applyChange(vmId, c));
    this.commit();
    return seqs;
  }

  /** Whether any applied change is not yet durable. */
  get hasPending(): boolean {
    for (const vm of this.vmsById.values()) if (vm.pending.count > 0) return true;
    return false;
  }

  /**
   * Makes every applied change durable in one transaction (the group commit
   * point). If the commit fails, the uncommitted changes are dropped from
   * memory too (nobody was told about them) and the error is rethrown.
   */
  commit(): void {
    this.commitWith();
  }

  /**
   * Commits the pending changes and whatever `also` writes in one transaction
   * (one fsync), so a sync costs a single commit.
   */
  private commitWith(also?: () => void): void {
    const dirty = [...this.vmsById.values()].filter((vm) => vm.pending.count > 0);
    if (dirty.length === 0 && !also) return;
    const checkpointed: Vm[] = [];
    try {
      this.db.transaction(() => {
        for (const vm of dirty) {
          const count = vm.pending.count;
          const head = this.log.append(
            vm.id,
            { seq: vm.committedSeq, crc: vm.headCrc },
            count,
            vm.pending.take(),
          );
          vm.committedSeq = head.seq;
          vm.headCrc = head.crc;
          // Continuous compaction: recovery replays at most one interval.
          if (vm.lastSeq - vm.checkpointSeq >= Math.max(this.checkpointInterval, vm.state.rangeCount)) {
            this.checkpointVm(vm);
            checkpointed.push(vm);
          }
        }
        also?.();
      })();
    } catch (err) {
      for (const vm of dirty) this.vmsById.set(vm.id, this.recover(this.stmts.vmRow.get(vm.id) as VmRow));
      throw new RuntimeFailure(
        'ERR_COMMIT',
        `${this.path}: commit failed, uncommitted changes dropped (${(err as Error).message})`,
        { cause: err },
      );
    }
    for (const vm of checkpointed) vm.checkpointSeq = vm.committedSeq;
  }

  /**
   * Takes a sync (docs/design.md §3): commits, then returns the ranges whose state
   * changed since the previous sync and a snapshot of the full state. The
   * cost is the changes since the previous sync, not the guest's size.
   */
  sync(vmId: number): SyncResult {
    const vm = this.vm(vmId);
    const seq = vm.lastSeq;
    const takeCheckpoint = seq - vm.checkpointSeq >= this.checkpointInterval;
    // Every change the sync covers is durable before it is answered. The
    // sync row and checkpoint need no fsync of their own: losing them to a
    // power cut only makes the next sync's delta larger (a superset), never
    // smaller, so they ride along without one when nothing else is pending.
    const record = () => {
      this.syncs.record(vm.id, seq);
      this.migrations.record(vm.id, seq);
      if (takeCheckpoint) this.log.checkpoint(vm.id, seq, vm.state);
    };
    if (this.hasPending) this.commitWith(record);
    else this.withoutFsync(() => this.db.transaction(record)());
    this.migrations.recorded(vm.id);
    if (takeCheckpoint) vm.checkpointSeq = seq;
    return advanceSync(vm);
  }

  /** Runs fn with SQLite's synchronous level at NORMAL (no fsync per commit), then restores it. */
  private withoutFsync(fn: () => void): void {
    const level = this.db.pragma('synchronous', { simple: true });
    this.db.pragma('synchronous = NORMAL');
    try {
      fn();
    } finally {
      this.db.pragma(`synchronous = ${level}`);
    }
  }

  /** The state of a VM after change seq (0 = the initial state), rebuilt from the log. */
  stateAt(vmId: number, seq: number): PageStateMap {
    const vm = this.vm(vmId);
    if (!Number.isInteger(seq) || seq < 0 || seq > vm.lastSeq) {
      throw new InvalidArgumentError('seq', `seq ${seq} must be from 0 to the newest change (${vm.lastSeq})`);
    }
    this.commit();
    return this.log.replay(vmId, seq);
  }

  /** The ranges whose state differs between seq and now, with their current state. */
  diffSince(vmId: number, seq: number): StateRange[] {
    return this.stateAt(vmId, seq).diff(this.vm(vmId).state);
  }

  /** The current full state (a copy-on-write snapshot) and the seq of the newest change it holds. */
  snapshot(vmId: number): { state: PageStateMap; seq: number } {
    return { state: this.state(vmId), seq: this.vm(vmId).lastSeq };
  }

  /** A snapshot of the current full state (copy-on-write, cheap). */
  state(vmId: number): PageStateMap {
    return this.vm(vmId).state.clone();
  }

  /** The changes with sequence numbers in (afterSeq, uptoSeq], in order. */
  changes(
    vmId: number,
    afterSeq = 0,
    uptoSeq = this.vm(vmId).lastSeq,
  ): IterableIterator<StateRange & { seq: number }> {
    this.commit();
    return this.log.changes(vmId, afterSeq, uptoSeq);
  }

  migrationControl(vmId: number): bigint {
    return this.vm(vmId).migrationControl;
  }

  /**
   * Opens the record of a migration of vm to `destination` (migration-records.ts);
   * commits pending changes first, so its start seq orders after them. Every
   * sync of vm until endMigration is recorded against it. Durable on return.
   */
  beginMigration(vmId: number, destination: string): number {
    const vm = this.vm(vmId);
    this.commit();
    return this.migrations.begin(vm.id, vm.lastSeq, destination);
  }

  /** Closes an open migration record with its outcome and message. Durable on return. */
  endMigration(id: number, outcome: MigrationOutcome, message: string): void {
    this.commit();
    this.migrations.end(id, outcome, message);
  }

  /** The open migration of vm, if any. */
  openMigration(vmId: number): number | undefined {
    this.vm(vmId);
    return this.migrations.openOf(vmId);
  }

  /** Every migration record of vm, oldest first, with the syncs each took. */
  migrationRecords(vmId: number): MigrationRecord[] {
    this.vm(vmId);
    return this.migrations.of(vmId);
  }

  /**
   * A guest's write to MSR_KVM_MIGRATION_CONTROL. Only KVM_MIGRATION_READY
   * (bit 0) may be set; other bits are refused as KVM refuses them. Commits
   * pending changes first so the write is ordered after them in the log.
   */
  setMigrationControl(vmId: number, value: bigint): void {
    const vm = this.vm(vmId);
    if ((value & ~MIGRATION_CONTROL_VALID) !== 0n || value < 0n) {
      throw new InvalidArgumentError(
        'value',
        `MSR_KVM_MIGRATION_CONTROL value 0x${value.toString(16)} sets undefined bits; only KVM_MIGRATION_READY (bit 0) exists`,
      );
    }
    this.commit();
    this.db.transaction(() => {
      this.stmts.setControl.run(value, vm.id);
      this.stmts.logControl.run(vm.id, vm.lastSeq, value, new Date().toISOString());
    })();
    vm.migrationControl = value;
  }
}
