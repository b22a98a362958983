import { describe, expect, it } from 'vitest';
import {
  decodeHypercall,
  KVM_CPUID_FEATURES,
  KVM_EINVAL,
  KVM_ENOSYS,
  KVM_FEATURE_HC_MAP_GPA_RANGE,
  KVM_FEATURE_MIGRATION_CONTROL,
  KVM_MIGRATION_READY,
  MSR_KVM_MIGRATION_CONTROL,
} from '../../src/common/kvm-abi.js';
import { GuestKernel, pageTableChunks } from '../../src/guest/guest-kernel.js';
import type { HypercallPort } from '../../src/guest/hypercall-port.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

/** A recording port that isolates the kernel helper (a unit test double, not a host). */
class RecordingPort implements HypercallPort {
  calls: { nr: number; a0: bigint; a1: bigint; a2: bigint; cbitAtCall: boolean }[] = [];
  msrs: [number, bigint][] = [];
  constructor(
    private readonly memory: GuestMemory,
    private readonly features: number,
    private readonly answer: (n: number) => number = () => 0,
  ) {}
  hypercall(nr: number, a0: bigint, a1: bigint, a2: bigint): number {
    this.calls.push({ nr, a0, a1, a2, cbitAtCall: this.memory.isEncrypted(Number(a0 >> 12n)) });
    return this.answer(this.calls.length);
  }
  wrmsr(msr: number, value: bigint): void {
    this.msrs.push([msr, value]);
  }
  rdmsr(): bigint {
    return 0n;
  }
  cpuid(leaf: number) {
    return { eax: leaf === KVM_CPUID_FEATURES ? this.features : 0, ebx: 0, ecx: 0, edx: 0 };
  }
}

const ALL = (1 << KVM_FEATURE_HC_MAP_GPA_RANGE) | (1 << KVM_FEATURE_MIGRATION_CONTROL);

describe('GuestKernel', () => {
  it('changes its own c-bit first, then notifies, one 4K-coded call per page-table chunk', () => {
    const mem = GuestMemory.create(2048);
    const port = new RecordingPort(mem, ALL);
    const k = new GuestKernel(mem, port);
    k.setMemoryDecrypted(511 * 4096, 514); // 1 page, one 2M chunk, 1 page
    expect(port.calls.map((c) => [Number(c.a0 >> 12n), Number(c.a1), Number(c.a2)])).toEqual([
      [511, 1, 0],
      [512, 512, 0],
      [1024, 1, 0],
    ]);
    expect(port.calls.every((c) => c.cbitAtCall === false)).toBe(true);
    for (const c of port.calls) expect(decodeHypercall(c.nr, c.a0, c.a1, c.a2, 2048).ok).toBe(true);
  });

  it('sends 2M/1G size hints when asked', () => {
    const mem = GuestMemory.create(1024);
    const port = new RecordingPort(mem, ALL);
    new GuestKernel(mem, port, { sizeHints: true }).setMemoryEncrypted(0, 513);
    expect(port.calls.map((c) => Number(c.a2))).toEqual([0x11, 0x10]);
    expect(pageTableChunks(0, 512 * 512 + 1).map((c) => c.pageSizeCode)).toEqual([2, 0]);
  });

  it('stops notifying after -KVM_ENOSYS and reports migration unsupported', () => {
    const mem = GuestMemory.create(64);
    const port = new RecordingPort(mem, ALL, () => -KVM_ENOSYS);
    const k = new GuestKernel(mem, port);
    k.setMemoryDecrypted(0, 3);
    k.setMemoryDecrypted(8 * 4096, 1);
    expect(port.calls).toHaveLength(1);
    expect(k.migrationSupported).toBe(false);
    expect(mem.isEncrypted(8)).toBe(false); // the guest's own tables still change
    expect(k.enableMigration()).toBe(false);
    expect(port.msrs).toEqual([]);
  });

  it('withdraws READY when the first notification answers -KVM_ENOSYS', () => {
    const mem = GuestMemory.create(64);
    const port = new RecordingPort(mem, ALL, () => -KVM_ENOSYS);
    const k = new GuestKernel(mem, port);
    expect(k.enableMigration()).toBe(true);
    k.setMemoryDecrypted(0, 1);
    expect(port.msrs).toEqual([
      [MSR_KVM_MIGRATION_CONTROL, KVM_MIGRATION_READY],
      [MSR_KVM_MIGRATION_CONTROL, 0n],
    ]);
  });

  it('does not issue the hypercall when CPUID lacks the feature bit', () => {
    const mem = GuestMemory.create(64);
    const port = new RecordingPort(mem, 0);
    const k = new GuestKernel(mem, port);
    k.setMemoryDecrypted(0, 1);
    expect(port.calls).toHaveLength(0);
    expect(k.migrationSupported).toBe(false);
  });

  it('counts rejected notifications (Linux ignores the return value) and keeps going', () => {
    const mem = GuestMemory.create(64);
    const port = new RecordingPort(mem, ALL, (n) => (n === 1 ? -KVM_EINVAL : 0));
    const k = new GuestKernel(mem, port);
    k.setMemoryDecrypted(0, 2);
    expect(k.rejectedNotifications).toBe(1);
    expect(port.calls).toHaveLength(2);
  });

  it('sets READY through the MSR and clears it before kexec', () => {
    const mem = GuestMemory.create(64);
    const port = new RecordingPort(mem, ALL);
    const k = new GuestKernel(mem, port);
    expect(k.enableMigration()).toBe(true);
    k.prepareKexec();
    expect(port.msrs).toEqual([
      [MSR_KVM_MIGRATION_CONTROL, KVM_MIGRATION_READY],
      [MSR_KVM_MIGRATION_CONTROL, 0n],
    ]);
    const noMsr = new GuestKernel(mem, new RecordingPort(mem, 1 << KVM_FEATURE_HC_MAP_GPA_RANGE));
    expect(noMsr.enableMigration()).toBe(false);
  });

  it('rejects unaligned or out-of-range conversions without touching anything', () => {
    const mem = GuestMemory.create(16);
    const port = new RecordingPort(mem, ALL);
    const k = new GuestKernel(mem, port);
    expect(() => k.setMemoryDecrypted(100, 1)).toThrow(/gpa 100 must be a non-negative multiple of 4096/);
    expect(() => k.setMemoryDecrypted(15 * 4096, 2)).toThrow(/npages 2/);
    expect(port.calls).toHaveLength(0);
    expect(mem.cbits.count()).toBe(16);
  });
});
