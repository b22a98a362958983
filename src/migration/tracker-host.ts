/**
 * Where a source's guest reports and its migration reads the c-bit state:
 * the host side of runSource. In process (the default): a CbitStore in a
 * temporary database, the guest's exits applied straight into it, the store
 * itself the tracker. With a service (`--service SOCKET --vm ID`): the
 * guest's exits are forwarded to `sevtrack serve`, the syncs come from it,
 * and the service keeps a record of the migration (MIGRATION_BEGIN/END):
 * where it went, its syncs, and how it ended.
 *
 * A service that goes away mid-migration (killed, shutting down) aborts the
 * migration: explain() names it, with what the service had acknowledged.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RuntimeFailure } from '../common/errors.js';
import { CbitStore } from '../host/cbit-store.js';
import type { MigrationOutcome } from '../host/migration-records.js';
import { type HypercallBackend, InProcessBackend } from '../vmm/hypercall-backend.js';
import { attachServiceVm, connectService, type ServiceVm } from '../vmm/service-vm.js';
import type { MigrationSummary } from './source-types.js';
import type { Tracker } from './tracker.js';
import { type ServiceRecord, ServiceTracker } from './tracker-service.js';

export type { ServiceRecord } from './tracker-service.js';

/** The host service went away during the migration: it aborted, the source guest runs on. */
export class ServiceLostError extends RuntimeFailure {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_SERVICE_LOST', message, options);
  }
}

/** `--service SOCKET --vm ID`. */
export interface ServiceTarget {
  socket: string;
  vm: number;
}

export interface SourceHost {
  readonly vm: number;
  readonly backend: HypercallBackend;
  readonly tracker: Tracker;
  /** Opens the record of the migration to `destination` (the service's; nothing in process). */
  begin(destination: string): Promise<void>;
  /** Records the verdict; never throws (a failure is kept in record().recordError). */
  ended(summary: MigrationSummary): Promise<void>;
  /** Records the abort; never throws. */
  aborted(err: Error): Promise<void>;
  /** The error to report for err: a lost service is named as such. */
  explain(err: unknown, guestRunning: boolean): unknown;
  record(): ServiceRecord | undefined;
  close(): Promise<void>;
}

/** The default: a CbitStore in a temporary database, deleted on close. */
export function inProcessHost(npages: number, initialEncrypted: boolean): SourceHost {
  const dir = mkdtempSync(join(tmpdir(), 'sevtrack-src-'));
  const store = CbitStore.open(join(dir, 'host.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, npages, { initialEncrypted });
  return {
    vm: 1,
    backend: new InProcessBackend(store),
    tracker: store,
    begin: async () => {},
    ended: async () => {},
    aborted: async () => {},
    explain: (err) => err,
    record: () => undefined,
    close: async () => {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function outcomeOf(s: MigrationSummary): MigrationOutcome {
  if (s.verified) return 'verified';
  return s.resumed ? 'resumed-unverified' : 'verify-failed';
}

class ServiceHost implements SourceHost {
  readonly tracker: ServiceTracker;
  private migration = 0;
  private recordError: string | undefined;

  constructor(
    private readonly target: ServiceTarget,
    private readonly attached: ServiceVm,
  ) {
    this.tracker = new ServiceTracker(attached.client);
  }

  get vm(): number {
    return this.attached.vm;
  }

  get backend(): HypercallBackend {
    return this.attached.backend;
  }

  async begin(destination: string): Promise<void> {
    this.migration = await this.attached.client.migrationBegin(this.vm, destination);
  }

  private async end(outcome: MigrationOutcome, message: string): Promise<void> {
    if (this.migration === 0) return;
    try {
      await this.attached.client.migrationEnd(this.migration, outcome, message);
    } catch (err) {
      this.recordError = `the outcome (${outcome}) was not recorded: ${(err as Error).message}`;
    }
  }

  ended(s: MigrationSummary): Promise<void> {
    return this.end(outcomeOf(s), `${s.message}; ${s.rounds} rounds, ${s.pagesSent} pages sent`);
  }

  aborted(err: Error): Promise<void> {
    return this.end('aborted', err.message);
  }

  explain(err: unknown, guestRunning: boolean): unknown {
    const client = this.attached.client;
    const lost = client.shuttingDown ? new Error('it is shutting down') : client.lost;
    if (!lost) return err;
    const last = this.tracker.lastSync?.seq ?? 0;
    return new ServiceLostError(
      `migration aborted: the host service at ${this.target.socket} went away (${lost.message}); ` +
        `the source guest is ${guestRunning ? 'running, unpaused' : 'NOT running'}, its memory and c-bit state intact; ` +
        `the service acknowledged c-bit changes of vm ${this.vm} up to seq ${this.attached.backend.ackedSeq}, the migration's last sync was seq ${last}`,
      { cause: err },
    );
  }

  record(): ServiceRecord {
    const last = this.tracker.lastSync;
    return {
      socket: this.target.socket,
      vm: this.vm,
      registered: this.attached.registered,
      migration: this.migration,
      syncs: this.tracker.syncs,
      finalSyncSeq: last?.seq ?? 0,
      finalEncryptedPages: last?.encryptedPages ?? 0,
      finalRangeCount: last?.rangeCount ?? 0,
      ackedSeq: this.attached.backend.ackedSeq,
      ...(this.recordError === undefined ? {} : { recordError: this.recordError }),
    };
  }

  close(): Promise<void> {
    return this.attached.client.close();
  }
}

/**
 * Connects to the service and registers the guest there (or takes over a
 * fresh registration: service-vm.ts says which ids are accepted).
 */
export async function serviceHost(
  target: ServiceTarget,
  npages: number,
  initialEncrypted: boolean,
): Promise<SourceHost> {
  const client = await connectService(target.socket);
  try {
    return new ServiceHost(target, await attachServiceVm(client, target.vm, npages, initialEncrypted));
  } catch (err) {
    await client.close();
    throw err;
  }
}
