/**
 * CbitStore: the host's durable record of every guest's c-bit state
 * (docs/design.md §3 rule 1, §6). Per VM it keeps, in memory, the full state as a
 * PageStateMap and, in SQLite (WAL), the append-only change log with
 * monotonically increasing sequence numbers, checkpoints of the full state,
 * syncs and the migration-control (READY) state.
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
import type { PageRange, StateRange } from '../common/ranges.js';
import { forEachRecord, SegmentWriter } from './change-segment.js';
import { MAX_GUEST_PAGES, PageStateMap } from './page-state-map.js';
import { migrate } from './schema.js';

/** Take a checkpoint of the full state at a sync once this many changes accumulated since the last one. */
const DEFAULT_CHECKPOINT_INTERVAL = 65_536;
/** The migration-control MSR bits a guest may set (KVM rejects others). */
const MIGRATION_CONTROL_VALID = KVM_MIGRATION_READY;

export interface VmInfo {
  id: number;
  npages: number;
  initialEncrypted: boolean;
  migrationControl: bigint;
  encryptedPages: number;
  sharedPages: number;
  rangeCount: number;
  /** Sequence number of the newest change (0 = none). */
  lastSeq: number;
  /** Sequence number of the newest sync (0 = none yet). */
  lastSyncSeq: number;
  /** Number of changes in the log. */
  logLength: number;
}

export interface SyncResult {
  /** The new sync's sequence number: every change up to it is consumed. */
  seq: number;
  previousSeq: number;
  /** Coalesced ranges whose state changed since the previous sync, with their new state. */
  delta: StateRange[];
  /** A consistent snapshot of the full state at seq (independent of later changes). */
  state: PageStateMap;
}

export type HypercallOutcome =
  | { ret: 0; seq: number; change: GpaRangeChange }
  | { ret: number; seq?: undefined; field: string; message: string };

interface Vm {
  id: number;
  npages: number;
  initialEncrypted: boolean;
  migrationControl: bigint;
  state: PageStateMap;
  lastSeq: number;
  committedSeq: number;
  pending: SegmentWriter;
  lastSyncSeq: number;
  lastSyncState: PageStateMap;
  /**
   * (gfn, npages) pairs changed since the last sync, to bound the sync's
   * diff; null when unknown (after recovery), which means a full diff.
   * A flat array keeps the per-change cost to one push.
   */
  touched: number[] | null;
  checkpointSeq: number;
}

export interface OpenOptions {
  readonly?: boolean;
  /** SQLite synchronous level: FULL (default) survives power loss; NORMAL survives a process crash. */
  synchronous?: 'FULL' | 'NORMAL';
  /** Changes between checkpoints of the full state (taken at syncs); bounds recovery's replay. */
  checkpointInterval?: number;
}

export class CbitStore {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly vmsById = new Map<number, Vm>();
  private readonly stmts;
  private readonly checkpointInterval: number;

  private constructor(path: string, db: Database.Database, checkpointInterval: number) {
    this.path = path;
    this.db = db;
    this.checkpointInterval = checkpointInterval;
    this.stmts = {
      insertVm: db.prepare(
        'INSERT INTO vms (id, npages, initial_encrypted, migration_control, created_at) VALUES (?, ?, ?, 0, ?)',
      ),
      insertSegment: db.prepare(
        'INSERT INTO change_segments (vm, first_seq, count, records) VALUES (?, ?, ?, ?)',
      ),
      insertSync: db.prepare('INSERT OR IGNORE INTO syncs (vm, seq, created_at) VALUES (?, ?, ?)'),
      insertCheckpoint: db.prepare('INSERT OR REPLACE INTO checkpoints (vm, seq, state) VALUES (?, ?, ?)'),
      setControl: db.prepare('UPDATE vms SET migration_control = ? WHERE id = ?'),
      logControl: db.prepare(
        'INSERT INTO migration_control_log (vm, after_seq, value, at) VALUES (?, ?, ?, ?)',
      ),
      checkpointAtOrBefore: db.prepare(
        'SELECT seq, state FROM checkpoints WHERE vm = ? AND seq <= ? ORDER BY seq DESC LIMIT 1',
      ),
      segmentsAfter: db.prepare(
        'SELECT first_seq, count, records FROM change_segments WHERE vm = ? AND first_seq > ? AND first_seq <= ? ORDER BY first_seq',
      ),
      lastSync: db.prepare('SELECT max(seq) AS seq FROM syncs WHERE vm = ?'),
      lastSeq: db.prepare('SELECT max(first_seq + count - 1) AS seq FROM change_segments WHERE vm = ?'),
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
      store.loadAll();
      return store;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  close(): void {
    if (!this.db.open) return;
    if (!this.db.readonly) this.commit();
    this.db.close();
  }

  private loadAll(): void {
    const rows = this.db
      .prepare('SELECT id, npages, initial_encrypted, migration_control FROM vms ORDER BY id')
      .all() as {
      id: number;
      npages: number;
      initial_encrypted: number;
      migration_control: number | bigint;
    }[];
    for (const row of rows) this.vmsById.set(row.id, this.loadVm(row));
  }

  /** Rebuilds one VM from its newest checkpoint and the log after it. */
  private loadVm(row: {
    id: number;
    npages: number;
    initial_encrypted: number;
    migration_control: number | bigint;
  }): Vm {
    const lastSyncSeq = (this.stmts.lastSync.get(row.id) as { seq: number | null }).seq ?? 0;
    const lastSeq = (this.stmts.lastSeq.get(row.id) as { seq: number | null }).seq ?? 0;
    let syncState: PageStateMap | undefined;
    const state = this.replay(row.id, lastSeq, (seq, s) => {
      if (seq === lastSyncSeq) syncState = s.clone();
    });
    const ckpt = this.stmts.checkpointAtOrBefore.get(row.id, lastSeq) as { seq: number } | undefined;
    return {
      id: row.id,
      npages: row.npages,
      initialEncrypted: row.initial_encrypted === 1,
      migrationControl: BigInt(row.migration_control),
      state,
      lastSeq,
      committedSeq: lastSeq,
      pending: new SegmentWriter(),
      lastSyncSeq,
      lastSyncState: syncState ?? this.replay(row.id, lastSyncSeq),
      touched: lastSeq === lastSyncSeq ? [] : null,
      checkpointSeq: ckpt?.seq ?? 0,
    };
  }

  /**
   * The committed state of a VM at seq: the newest checkpoint at or before it
   * plus the log up to seq. onSeq, if given, sees the state after each seq
   * (and after the checkpoint's own seq).
   */
  private replay(
    vmId: number,
    seq: number,
    onSeq?: (seq: number, state: PageStateMap) => void,
  ): PageStateMap {
    const ckpt = this.stmts.checkpointAtOrBefore.get(vmId, seq) as { seq: number; state: Buffer } | undefined;
    if (!ckpt)
      throw new RuntimeFailure(
        'ERR_DB_CORRUPT',
        `${this.path}: vm ${vmId} has no checkpoint at or before seq ${seq}`,
      );
    const state = PageStateMap.deserialize(ckpt.state);
    onSeq?.(ckpt.seq, state);
    const segments = this.stmts.segmentsAfter.iterate(vmId, ckpt.seq, seq) as IterableIterator<{
      first_seq: number;
      count: number;
      records: Buffer;
    }>;
    for (const seg of segments) {
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
    if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
      throw new InvalidArgumentError('vm', `vm id ${id} must be an integer from 0 to 2^32-1`);
    }
    if (!Number.isInteger(npages) || npages < 1 || npages > MAX_GUEST_PAGES) {
      throw new InvalidArgumentError(
        'npages',
        `npages ${npages} must be an integer from 1 to 2^52 (guest size / 4 KiB)`,
      );
    }
    if (this.vmsById.has(id)) {
      throw new InvalidArgumentError('vm', `vm ${id} is already registered; pick another id`);
    }
    const initialEncrypted = options.initialEncrypted ?? true;
    const state = new PageStateMap(npages, initialEncrypted);
    this.db.transaction(() => {
      this.stmts.insertVm.run(id, npages, initialEncrypted ? 1 : 0, new Date().toISOString());
      this.stmts.insertCheckpoint.run(id, 0, state.serialize());
    })();
    this.vmsById.set(id, {
      id,
      npages,
      initialEncrypted,
      migrationControl: 0n,
      state,
      lastSeq: 0,
      committedSeq: 0,
      pending: new SegmentWriter(),
      lastSyncSeq: 0,
      lastSyncState: state.clone(),
      touched: [],
      checkpointSeq: 0,
    });
    return this.info(id);
  }

  hasVm(id: number): boolean {
    return this.vmsById.has(id);
  }

  vmIds(): number[] {
    return [...this.vmsById.keys()];
  }

  info(id: number): VmInfo {
    const vm = this.vm(id);
    return {
      id,
      npages: vm.npages,
      initialEncrypted: vm.initialEncrypted,
      migrationControl: vm.migrationControl,
      encryptedPages: vm.state.encryptedCount,
      sharedPages: vm.state.sharedCount,
      rangeCount: vm.state.rangeCount,
      lastSeq: vm.lastSeq,
      lastSyncSeq: vm.lastSyncSeq,
      logLength: vm.lastSeq,
    };
  }

  /**
   * Applies a decoded change to the in-memory state and the pending batch;
   * returns its sequence number. Durable only after commit().
   */
  applyChange(vmId: number, change: Pick<GpaRangeChange, 'gfn' | 'npages' | 'encrypted'>): number {
    const vm = this.vm(vmId);
    vm.state.apply(change.gfn, change.npages, change.encrypted);
    vm.pending.push(change.gfn, change.npages, change.encrypted);
    vm.touched?.push(change.gfn, change.npages);
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
    try {
      this.db.transaction(() => {
        for (const vm of dirty) {
          const count = vm.pending.count;
          this.stmts.insertSegment.run(vm.id, vm.committedSeq + 1, count, vm.pending.take());
        }
        also?.();
      })();
    } catch (err) {
      for (const vm of dirty) this.vmsById.set(vm.id, this.reloadVm(vm.id));
      throw new RuntimeFailure(
        'ERR_COMMIT',
        `${this.path}: commit failed, uncommitted changes dropped (${(err as Error).message})`,
        {
          cause: err,
        },
      );
    }
    for (const vm of dirty) vm.committedSeq = vm.lastSeq;
  }

  private reloadVm(id: number): Vm {
    const row = this.db
      .prepare('SELECT id, npages, initial_encrypted, migration_control FROM vms WHERE id = ?')
      .get(id);
    return this.loadVm(
      row as { id: number; npages: number; initial_encrypted: number; migration_control: number },
    );
  }

  /**
   * Takes a sync (docs/design.md §3): commits, then returns the ranges whose state
   * changed since the previous sync and a snapshot of the full state. The
   * cost is the changes since the previous sync, not the guest's size.
   */
  sync(vmId: number): SyncResult {
    const vm = this.vm(vmId);
    const previousSeq = vm.lastSyncSeq;
    const seq = vm.lastSeq;
    const takeCheckpoint = seq - vm.checkpointSeq >= this.checkpointInterval;
    const now = new Date().toISOString();
    // Every change the sync covers is durable before it is answered. The
    // sync row and checkpoint need no fsync of their own: losing them to a
    // power cut only makes the next sync's delta larger (a superset), never
    // smaller, so they ride along without one when nothing else is pending.
    const record = () => {
      this.stmts.insertSync.run(vm.id, seq, now);
      if (takeCheckpoint) this.stmts.insertCheckpoint.run(vm.id, seq, vm.state.serialize());
    };
    if (this.hasPending) this.commitWith(record);
    else this.withoutFsync(() => this.db.transaction(record)());
    const delta = vm.lastSyncState.diff(
      vm.state,
      vm.touched ? touchedWindows(vm.npages, vm.touched) : undefined,
    );
    if (takeCheckpoint) vm.checkpointSeq = seq;
    vm.lastSyncSeq = seq;
    vm.lastSyncState = vm.state.clone();
    vm.touched = [];
    return { seq, previousSeq, delta, state: vm.state.clone() };
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
    return this.replay(vmId, seq);
  }

  /** The ranges whose state differs between seq and now, with their current state. */
  diffSince(vmId: number, seq: number): StateRange[] {
    return this.stateAt(vmId, seq).diff(this.vm(vmId).state);
  }

  /** A snapshot of the current full state (copy-on-write, cheap). */
  state(vmId: number): PageStateMap {
    return this.vm(vmId).state.clone();
  }

  /** The changes with sequence numbers in (afterSeq, uptoSeq], in order. */
  *changes(
    vmId: number,
    afterSeq = 0,
    uptoSeq = this.vm(vmId).lastSeq,
  ): IterableIterator<StateRange & { seq: number }> {
    this.commit();
    const rows = this.db
      .prepare(
        'SELECT first_seq, count, records FROM change_segments WHERE vm = ? AND first_seq + count > ? AND first_seq <= ? ORDER BY first_seq',
      )
      .all(vmId, afterSeq + 1, uptoSeq) as { first_seq: number; count: number; records: Buffer }[];
    for (const seg of rows) {
      const out: (StateRange & { seq: number })[] = [];
      forEachRecord(seg.records, seg.count, (gfn, npages, encrypted, i) => {
        const seq = seg.first_seq + i;
        if (seq > afterSeq && seq <= uptoSeq) out.push({ seq, gfn, npages, encrypted });
      });
      yield* out;
    }
  }

  migrationControl(vmId: number): bigint {
    return this.vm(vmId).migrationControl;
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

/**
 * Merges (gfn, npages) pairs into disjoint, ascending windows, by marking them
 * in a scratch map (cheaper than sorting the pairs).
 */
export function touchedWindows(npages: number, pairs: readonly number[]): PageRange[] {
  const scratch = new PageStateMap(npages, false);
  for (let i = 0; i < pairs.length; i += 2) scratch.apply(pairs[i], pairs[i + 1], true);
  const out: PageRange[] = [];
  for (const r of scratch.ranges()) if (r.encrypted) out.push({ gfn: r.gfn, npages: r.npages });
  return out;
}
