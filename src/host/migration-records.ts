/**
 * Migration records (docs/host-protocol.md, MIGRATION_BEGIN / MIGRATION_END):
 * the host service's account of each migration of a VM it tracks — where it
 * went, every sync it took, and how it ended. A VM has at most one open
 * migration; while it is open, each sync of that VM is recorded against it
 * in the same transaction as the sync row (record() runs inside the caller's
 * transaction, like SyncTable.record).
 *
 * Outcomes: the migrating client reports verified, resumed-unverified,
 * verify-failed or aborted; the service itself closes a record `abandoned`
 * when the client's connection closed first, and `interrupted` when it finds
 * one still open at start (it stopped or was killed meanwhile).
 */
import type Database from 'better-sqlite3';
import { InvalidArgumentError } from '../common/errors.js';

/** Outcome codes of MIGRATION_END (the wire values) and the ones the service assigns. */
export const MIGRATION_OUTCOMES = [
  'verified',
  'resumed-unverified',
  'verify-failed',
  'aborted',
  'abandoned',
  'interrupted',
] as const;
export type MigrationOutcome = (typeof MIGRATION_OUTCOMES)[number];
/** The outcomes a client may report (wire codes 1-4, in this order). */
export const CLIENT_OUTCOMES: readonly MigrationOutcome[] = MIGRATION_OUTCOMES.slice(0, 4);

export interface MigrationSyncRecord {
  /** 1 for the migration's first sync, 2 for the next, ... */
  n: number;
  seq: number;
  at: string;
}

export interface MigrationRecord {
  id: number;
  vm: number;
  destination: string;
  startedAt: string;
  /** The VM's newest change when the migration began. */
  startSeq: number;
  endedAt: string | null;
  /** null while the migration is open. */
  outcome: MigrationOutcome | null;
  message: string | null;
  syncs: MigrationSyncRecord[];
}

interface OpenMigration {
  id: number;
  syncs: number;
}

interface Row {
  id: number;
  vm: number;
  destination: string;
  started_at: string;
  start_seq: number;
  ended_at: string | null;
  outcome: string | null;
  message: string | null;
}

/** The longest destination description and end message stored (bytes of UTF-8). */
export const MAX_DESTINATION_BYTES = 1024;
export const MAX_MESSAGE_BYTES = 65_536;

export class MigrationTable {
  private readonly open = new Map<number, OpenMigration>();
  private readonly stmts;

  constructor(
    private readonly db: Database.Database,
    readonly: boolean,
  ) {
    this.stmts = {
      insert: db.prepare(
        'INSERT INTO migrations (vm, destination, started_at, start_seq) VALUES (?, ?, ?, ?)',
      ),
      end: db.prepare('UPDATE migrations SET ended_at = ?, outcome = ?, message = ? WHERE id = ?'),
      sync: db.prepare('INSERT INTO migration_syncs (migration, n, seq, created_at) VALUES (?, ?, ?, ?)'),
      byVm: db.prepare('SELECT * FROM migrations WHERE vm = ? ORDER BY id'),
      byId: db.prepare('SELECT * FROM migrations WHERE id = ?'),
      syncsOf: db.prepare('SELECT n, seq, created_at FROM migration_syncs WHERE migration = ? ORDER BY n'),
      openRows: db.prepare('SELECT * FROM migrations WHERE outcome IS NULL'),
    };
    const stale = this.stmts.openRows.all() as Row[];
    if (readonly) {
      for (const r of stale) this.open.set(r.vm, { id: r.id, syncs: this.syncCount(r.id) });
    } else if (stale.length > 0) {
      // Whoever ran them lost the service meanwhile: they cannot be open any more.
      db.transaction(() => {
        for (const r of stale)
          this.stmts.end.run(
            new Date().toISOString(),
            'interrupted',
            'the host service stopped while the migration was open',
            r.id,
          );
      })();
    }
  }

  private syncCount(id: number): number {
    return (this.stmts.syncsOf.all(id) as unknown[]).length;
  }

  /** The open migration of vm, if any. */
  openOf(vm: number): number | undefined {
    return this.open.get(vm)?.id;
  }

  /** Opens a record (its own transaction); refuses a VM that has one open. Returns its id. */
  begin(vm: number, startSeq: number, destination: string): number {
    const bytes = Buffer.byteLength(destination);
    if (bytes < 1 || bytes > MAX_DESTINATION_BYTES)
      throw new InvalidArgumentError(
        'destination',
        `destination is ${bytes} bytes; describe it in 1 to ${MAX_DESTINATION_BYTES} bytes of UTF-8`,
      );
    const current = this.open.get(vm);
    if (current)
      throw new InvalidArgumentError(
        'vm',
        `vm ${vm} already has migration ${current.id} open; end it (MIGRATION_END) before beginning another`,
      );
    const id = Number(
      this.stmts.insert.run(vm, destination, new Date().toISOString(), startSeq).lastInsertRowid,
    );
    this.open.set(vm, { id, syncs: 0 });
    return id;
  }

  /** Records a sync of vm against its open migration (inside the sync's transaction). */
  record(vm: number, seq: number): void {
    const m = this.open.get(vm);
    if (m) this.stmts.sync.run(m.id, m.syncs + 1, seq, new Date().toISOString());
  }

  /** Counts the sync recorded by record() once its transaction committed. */
  recorded(vm: number): void {
    const m = this.open.get(vm);
    if (m) m.syncs++;
  }

  /** Closes an open record with its outcome; refuses an id that is unknown or already closed. */
  end(id: number, outcome: MigrationOutcome, message: string): void {
    const row = this.stmts.byId.get(id) as Row | undefined;
    if (!row) throw new InvalidArgumentError('migration', `migration ${id} does not exist`);
    if (row.outcome !== null)
      throw new InvalidArgumentError('migration', `migration ${id} already ended (${row.outcome})`);
    const bytes = Buffer.byteLength(message);
    if (bytes > MAX_MESSAGE_BYTES)
      throw new InvalidArgumentError(
        'message',
        `message is ${bytes} bytes; at most ${MAX_MESSAGE_BYTES} are stored`,
      );
    this.stmts.end.run(new Date().toISOString(), outcome, message, id);
    this.open.delete(row.vm);
  }

  /** Forgets vm's records (inside unregisterVm's transaction). */
  deleteVm(vm: number): void {
    this.db
      .prepare('DELETE FROM migration_syncs WHERE migration IN (SELECT id FROM migrations WHERE vm = ?)')
      .run(vm);
    this.db.prepare('DELETE FROM migrations WHERE vm = ?').run(vm);
    this.open.delete(vm);
  }

  /** Every migration record of vm, oldest first, with its syncs. */
  of(vm: number): MigrationRecord[] {
    return (this.stmts.byVm.all(vm) as Row[]).map((r) => ({
      id: r.id,
      vm: r.vm,
      destination: r.destination,
      startedAt: r.started_at,
      startSeq: r.start_seq,
      endedAt: r.ended_at,
      outcome: r.outcome as MigrationOutcome | null,
      message: r.message,
      syncs: (this.stmts.syncsOf.all(r.id) as { n: number; seq: number; created_at: string }[]).map((s) => ({
        n: s.n,
        seq: s.seq,
        at: s.created_at,
      })),
    }));
  }
}
