/**
 * A HypercallPort straight into a CbitStore on the same thread: each
 * hypercall is applied and committed before it returns. For guests driven
 * in-thread (the scripted guest of deterministic scenarios, unit tests).
 */

import { RuntimeFailure } from '../common/errors.js';
import { KVM_CPUID_FEATURES, MSR_KVM_MIGRATION_CONTROL } from '../common/kvm-abi.js';
import type { CpuidResult, HypercallPort } from '../guest/hypercall-port.js';
import type { CbitStore } from '../host/cbit-store.js';
import { type ConversionTap, FULL_SUPPORT } from './hypercall-backend.js';

export class DirectPort implements HypercallPort {
  /** Sees each applied change (as vCPU 0: the scripted guest has one). */
  tap: ConversionTap | undefined;

  constructor(
    private readonly store: CbitStore,
    private readonly vm: number,
    private readonly features = FULL_SUPPORT,
  ) {}

  hypercall(nr: number, a0: bigint, a1: bigint, a2: bigint): number {
    const out = this.store.applyHypercall(this.vm, nr, a0, a1, a2);
    if (out.seq !== undefined) {
      this.store.commit();
      const { gfn, npages, encrypted } = out.change;
      this.tap?.([{ seq: out.seq, vcpu: 0, gfn, npages, encrypted }]);
    }
    return out.ret;
  }

  wrmsr(msr: number, value: bigint): void {
    if (msr !== MSR_KVM_MIGRATION_CONTROL)
      throw new RuntimeFailure('ERR_GP', `#GP: MSR 0x${msr.toString(16)} is not emulated`);
    this.store.setMigrationControl(this.vm, value);
  }

  rdmsr(msr: number): bigint {
    if (msr !== MSR_KVM_MIGRATION_CONTROL)
      throw new RuntimeFailure('ERR_GP', `#GP: MSR 0x${msr.toString(16)} is not emulated`);
    return this.store.migrationControl(this.vm);
  }

  cpuid(leaf: number): CpuidResult {
    return { eax: leaf === KVM_CPUID_FEATURES ? this.features : 0, ebx: 0, ecx: 0, edx: 0 };
  }
}
