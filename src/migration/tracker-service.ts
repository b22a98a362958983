/**
 * The migration source's tracker when the c-bit state lives in a running
 * `sevtrack serve` (docs/host-protocol.md): syncs, counters and the READY
 * state come from the service over HostServiceClient. The service answers a
 * SYNC after committing every change it covers, and the source drained the
 * guest's exit rings into it just before (the VMM forwards them on the same
 * connection, SocketBackend), so the rules of docs/design.md §3 hold as with
 * the in-process store.
 */
import { RuntimeFailure } from '../common/errors.js';
import type { SyncResult } from '../host/cbit-store.js';
import type { PageStateMap } from '../host/page-state-map.js';
import type { HostServiceClient } from '../host/service-client.js';
import type { Tracker } from './tracker.js';

/** What the service's last sync of the migration covered. */
export interface LastSync {
  seq: number;
  encryptedPages: number;
  rangeCount: number;
}

/** What the service holds about this migration (the summary's `service` field). */
export interface ServiceRecord {
  socket: string;
  vm: number;
  /** Whether this run registered the VM with the service (false: registered ahead, unchanged). */
  registered: boolean;
  /** The service's migration record id (0 when it could not be opened). */
  migration: number;
  /** Syncs the migration took from the service. */
  syncs: number;
  /** The last sync's seq, and the state it returned (the final state of the paused round). */
  finalSyncSeq: number;
  finalEncryptedPages: number;
  finalRangeCount: number;
  /** The newest change the service acknowledged to the VMM. */
  ackedSeq: number;
  /** Set when the migration's outcome could not be recorded (the service went away after the verdict). */
  recordError?: string;
}

/** Reads of the state before a snapshot gives up (each races the VMM's forwarding once). */
const SNAPSHOT_ATTEMPTS = 100;

export class ServiceTracker implements Tracker {
  /** Syncs taken through this tracker. */
  syncs = 0;
  lastSync: LastSync | undefined;

  constructor(private readonly client: HostServiceClient) {}

  async sync(vm: number): Promise<SyncResult> {
    const s = await this.client.sync(vm);
    this.syncs++;
    this.lastSync = { seq: s.seq, encryptedPages: s.state.encryptedCount, rangeCount: s.state.rangeCount };
    return s;
  }

  /**
   * The full state and the seq it is at. The VMM forwards changes while the
   * ranges are read, so the newest seq is read before and after them: equal,
   * no change was applied in between (every applied change takes a seq), and
   * the state is the one at that seq; otherwise it reads again.
   */
  async snapshot(vm: number): Promise<{ state: PageStateMap; seq: number }> {
    for (let attempt = 1; ; attempt++) {
      const before = (await this.client.queryVm(vm)).lastSeq;
      const state = await this.client.state(vm);
      const after = (await this.client.queryVm(vm)).lastSeq;
      if (before === after) return { state, seq: after };
      if (attempt === SNAPSHOT_ATTEMPTS)
        throw new RuntimeFailure(
          'ERR_SNAPSHOT',
          `vm ${vm}: the guest changed c-bits during each of ${SNAPSHOT_ATTEMPTS} reads of its state from the host service; no consistent snapshot`,
        );
    }
  }

  info(vm: number): Promise<{ lastSeq: number; lastSyncSeq: number }> {
    return this.client.queryVm(vm);
  }

  migrationControl(vm: number): Promise<bigint> {
    return this.client.getMigrationControl(vm);
  }
}
