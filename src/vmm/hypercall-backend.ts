/**
 * The host end of a guest's exits: where a VMM forwards MAP_GPA_RANGE
 * hypercalls and migration-control MSR writes. Two transports:
 *
 * - InProcessBackend: straight into a CbitStore in this process, with group
 *   commit (the exit completes only after the commit holding the change);
 * - SocketBackend: to `sevtrack serve` through HostServiceClient.
 *
 * The kvm backend's port-IO exits and the sim backend's worker exits both end
 * here, so the guest sees the same host whichever transport is chosen.
 */
import {
  KVM_ENOSYS,
  KVM_FEATURE_HC_MAP_GPA_RANGE,
  KVM_FEATURE_MIGRATION_CONTROL,
} from '../common/kvm-abi.js';
import type { CbitStore } from '../host/cbit-store.js';
import { GroupCommit } from '../host/group-commit.js';
import type { HostServiceClient } from '../host/service-client.js';

export interface HypercallBackend {
  /** Handles one hypercall of `vm`; resolves with the KVM return code once the change is durable. */
  hypercall(vm: number, nr: bigint, a0: bigint, a1: bigint, a2: bigint): Promise<number>;
  setMigrationControl(vm: number, value: bigint): Promise<void>;
  getMigrationControl(vm: number): Promise<bigint>;
  /** CPUID 0x40000001 EAX as this host advertises it. */
  readonly cpuidFeatures: number;
}

/** Both protocol bits: the host tracks c-bits and has the migration-control MSR. */
export const FULL_SUPPORT = (1 << KVM_FEATURE_HC_MAP_GPA_RANGE) | (1 << KVM_FEATURE_MIGRATION_CONTROL);

export class InProcessBackend implements HypercallBackend {
  readonly cpuidFeatures = FULL_SUPPORT;
  private readonly commits: GroupCommit;

  constructor(readonly store: CbitStore) {
    this.commits = new GroupCommit(store);
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

export class SocketBackend implements HypercallBackend {
  readonly cpuidFeatures = FULL_SUPPORT;

  constructor(readonly client: HostServiceClient) {}

  async hypercall(vm: number, nr: bigint, a0: bigint, a1: bigint, a2: bigint): Promise<number> {
    return (await this.client.hypercall(vm, { nr, a0, a1, a2 })).ret;
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
  private control = 0n;

  constructor(readonly cpuidFeatures = 0) {}

  async hypercall(): Promise<number> {
    return -KVM_ENOSYS;
  }

  async setMigrationControl(_vm: number, value: bigint): Promise<void> {
    this.control = value;
  }

  async getMigrationControl(): Promise<bigint> {
    return this.control;
  }
}
