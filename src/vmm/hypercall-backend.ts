/**
 * The host end of a guest's exits: where a VMM forwards MAP_GPA_RANGE
 * hypercalls and migration-control MSR writes. Two transports:
 *
 * - InProcessBackend: straight into a CbitStore in this process, with group
 *   commit (a sync commits what it consumes before it answers);
 * - SocketBackend: to `sevtrack serve` through HostServiceClient; the
 *   service answers after the commit holding the changes, so nothing it
 *   acknowledged is lost on kill -9 (the exit rings hold the rest).
 *
 * Two entries: `hypercall` for an exit that waits for the host (one call,
 * resolved once durable), and `applyValidated` for changes the sim backend's
 * vCPU threads validated themselves and queued in their exit rings
 * (src/vmm/sim/exit-rings.ts), handed over in order by the tracker. The
 * guest sees the same host whichever transport is chosen.
 */
import { RuntimeFailure } from '../common/errors.js';
import {
  KVM_ENOSYS,
  KVM_FEATURE_HC_MAP_GPA_RANGE,
  KVM_FEATURE_MIGRATION_CONTROL,
  mapGpaRangeCall,
} from '../common/kvm-abi.js';
import type { CbitStore } from '../host/cbit-store.js';
import { GroupCommit } from '../host/group-commit.js';
import type { HostServiceClient } from '../host/service-client.js';

/** A MAP_GPA_RANGE change a vCPU thread has already validated (decodeHypercall). */
export interface ValidatedChange {
  gfn: number;
  npages: number;
  encrypted: boolean;
  /** The vCPU whose exit made it (0 where unknown). */
  vcpu?: number;
}

/** A change the tracker applied: the vCPU that made it and the sequence number it got. */
export interface TrackedChange {
  seq: number;
  vcpu: number;
  gfn: number;
  npages: number;
  encrypted: boolean;
}

/**
 * Sees every change right after the tracker applied it, in sequence order
 * (the migration log records the guest's conversions through it).
 */
export type ConversionTap = (changes: readonly TrackedChange[]) => void;

export interface HypercallBackend {
  /**
   * Whether the host handles KVM_HC_MAP_GPA_RANGE at all (KVM_CAP_EXIT_HYPERCALL
   * bit 12): when false, the vCPU answers -KVM_ENOSYS without an exit.
   */
  readonly forwardsHypercalls: boolean;
  /** Handles one hypercall of `vm`; resolves with the KVM return code once the change is durable. */
  hypercall(vm: number, nr: bigint, a0: bigint, a1: bigint, a2: bigint): Promise<number>;
  /**
   * Takes changes the vCPU threads validated and drained from their rings, in
   * order. Returns nothing when the host holds them once this returns
   * (in-process: in the store's state, committed by the next group commit or
   * sync), or a promise that resolves once the host holds them durably.
   */
  applyValidated(vm: number, changes: readonly ValidatedChange[]): Promise<void> | undefined;
  /** Called with the changes applyValidated applied, once they have their sequence numbers. */
  tap?: ConversionTap;
  setMigrationControl(vm: number, value: bigint): Promise<void>;
  getMigrationControl(vm: number): Promise<bigint>;
  /** CPUID 0x40000001 EAX as this host advertises it. */
  readonly cpuidFeatures: number;
}

/** Both protocol bits: the host tracks c-bits and has the migration-control MSR. */
export const FULL_SUPPORT = (1 << KVM_FEATURE_HC_MAP_GPA_RANGE) | (1 << KVM_FEATURE_MIGRATION_CONTROL);

export class InProcessBackend implements HypercallBackend {
  readonly cpuidFeatures = FULL_SUPPORT;
  readonly forwardsHypercalls = true;
  tap: ConversionTap | undefined;
  private readonly commits: GroupCommit;
  private commitError: Error | undefined;

  constructor(readonly store: CbitStore) {
    this.commits = new GroupCommit(store);
  }

  /**
   * Applies the changes to the store's state now; a group commit on the next
   * event-loop turn makes them durable (a sync commits first anyway).
   */
  applyValidated(vm: number, changes: readonly ValidatedChange[]): undefined {
    if (this.commitError) throw this.commitError;
    const tracked: TrackedChange[] | undefined = this.tap ? [] : undefined;
    for (const c of changes) {
      const seq = this.store.applyChange(vm, c);
      tracked?.push({ seq, vcpu: c.vcpu ?? 0, gfn: c.gfn, npages: c.npages, encrypted: c.encrypted });
    }
    if (tracked) this.tap?.(tracked);
    if (changes.length > 0)
      this.commits.whenDurable(
        () => {},
        (e) => {
          this.commitError = e;
        },
      );
    return undefined;
  }

  /** The exit completes only once the commit holding the change is done (one per event-loop turn). */
  hypercall(vm: number, nr: bigint, a0: bigint, a1: bigint, a2: bigint): Promise<number> {
    const out = this.store.applyHypercall(vm, nr, a0, a1, a2);
    if (out.seq === undefined) return Promise.resolve(out.ret);
    return new Promise((resolve, reject) => this.commits.whenDurable(() => resolve(0), reject));
  }

  async setMigrationControl(vm: number, value: bigint): Promise<void> {
    this.store.setMigrationControl(vm, value);
  }

  async getMigrationControl(vm: number): Promise<bigint> {
    return this.store.migrationControl(vm);
  }
}

/** Hypercalls per HYPERCALL_BATCH request (the service's limit is larger). */
const FORWARD_BATCH = 1024;

export class SocketBackend implements HypercallBackend {
  readonly cpuidFeatures = FULL_SUPPORT;
  readonly forwardsHypercalls = true;
  tap: ConversionTap | undefined;
  /** The newest sequence number the service acknowledged (durable there). */
  ackedSeq = 0;

  constructor(readonly client: HostServiceClient) {}

  /**
   * Forwards the changes in order, in batches; resolves once the service has
   * answered every batch (it answers after the commit holding them).
   */
  async applyValidated(vm: number, changes: readonly ValidatedChange[]): Promise<void> {
    const batches: Promise<{ ret: number; seq?: number }[]>[] = [];
    for (let i = 0; i < changes.length; i += FORWARD_BATCH) {
      const calls = changes
        .slice(i, i + FORWARD_BATCH)
        .map((c) => mapGpaRangeCall(c.gfn, c.npages, c.encrypted));
      batches.push(this.client.hypercallBatch(vm, calls));
    }
    const tracked: TrackedChange[] = [];
    for (const [b, replies] of (await Promise.all(batches)).entries()) {
      for (const r of replies) if (r.seq !== undefined && r.seq > this.ackedSeq) this.ackedSeq = r.seq;
      const bad = replies.find((r) => r.ret !== 0);
      if (bad)
        throw new RuntimeFailure(
          'ERR_FORWARD',
          `the host service rejected a change the vCPU had validated (ret ${bad.ret}): its VM does not match the guest`,
        );
      if (this.tap)
        replies.forEach((r, i) => {
          const c = changes[b * FORWARD_BATCH + i];
          tracked.push({
            seq: Number(r.seq),
            vcpu: c.vcpu ?? 0,
            gfn: c.gfn,
            npages: c.npages,
            encrypted: c.encrypted,
          });
        });
    }
    if (tracked.length > 0) this.tap?.(tracked);
  }

  async hypercall(vm: number, nr: bigint, a0: bigint, a1: bigint, a2: bigint): Promise<number> {
    const r = await this.client.hypercall(vm, { nr, a0, a1, a2 });
    if (r.seq !== undefined && r.seq > this.ackedSeq) this.ackedSeq = r.seq;
    return r.ret;
  }

  setMigrationControl(vm: number, value: bigint): Promise<void> {
    return this.client.setMigrationControl(vm, value);
  }

  getMigrationControl(vm: number): Promise<bigint> {
    return this.client.getMigrationControl(vm);
  }
}

/**
 * A host that does not forward the hypercall (KVM without KVM_CAP_EXIT_HYPERCALL
 * for it): every hypercall answers -KVM_ENOSYS; the migration-control MSR, if
 * advertised, still holds its value.
 */
export class UnsupportedBackend implements HypercallBackend {
  readonly forwardsHypercalls = false;
  private control = 0n;

  constructor(readonly cpuidFeatures = 0) {}

  async hypercall(): Promise<number> {
    return -KVM_ENOSYS;
  }

  applyValidated(): undefined {
    throw new RuntimeFailure('ERR_FORWARD', 'this host does not handle KVM_HC_MAP_GPA_RANGE');
  }

  async setMigrationControl(_vm: number, value: bigint): Promise<void> {
    this.control = value;
  }

  async getMigrationControl(): Promise<bigint> {
    return this.control;
  }
}
