/**
 * How the kvm backend fails: a guest that crashes or hangs is reported with
 * the vCPU and the reason (never a hang of the host), a failed ioctl carries
 * its name, target and errno, and misuse is refused with the field named.
 * Skips, naming the reason, where /dev/kvm is missing or unusable.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, KvmError } from '../../../src/common/errors.js';
import { PageBitmap } from '../../../src/common/page-bitmap.js';
import { kvmSkipReason } from '../../../src/vmm/kvm/availability.js';
import { kvmLayout } from '../../../src/vmm/kvm/control-page.js';
import { KvmGuest } from '../../../src/vmm/kvm/kvm-guest.js';
import { waitForBatch } from '../../../src/vmm/kvm/wait-for.js';

const skip = kvmSkipReason();
if (skip) console.warn(`kvm tests skipped: ${skip}`);

/** A one-vCPU guest running `code` instead of the helper. */
function rawGuest(code: number[], stallMs = 10_000): KvmGuest {
  const g = KvmGuest.create({
    ramPages: 256,
    vcpus: 1,
    profile: 'cpl3',
    workload: 'idle',
    boot: false,
    stallMs,
  });
  g.ram.set(code, kvmLayout().codeGpa);
  return g;
}

describe('kvm backend failures', () => {
  it.skipIf(skip)(
    'a guest that triple-faults is reported as failed, naming the vCPU and the exit',
    async () => {
      const g = rawGuest([0x0f, 0x0b]); // ud2, and no IDT
      try {
        const failed = waitForBatch(g, () => false, 'a failure');
        g.resume();
        await expect(failed).rejects.toThrow(/vCPU 0: guest stopped with KVM_EXIT_SHUTDOWN/);
        expect(g.status()[0].failed).toBe(true);
        g.pause(); // a failed vCPU counts as parked
      } finally {
        g.close();
      }
    },
  );

  it.skipIf(skip)('a guest that spins without exits or progress is caught by the watchdog', async () => {
    const g = rawGuest([0xeb, 0xfe], 200); // jmp $
    try {
      const failed = waitForBatch(g, () => false, 'the watchdog');
      g.resume();
      await expect(failed).rejects.toThrow(
        /vCPU 0: watchdog: no exit and no progress for 200 ms \(rip 0x10000\)/,
      );
    } finally {
      g.close();
    }
  });

  it.skipIf(skip)('a refused ioctl carries its name, target and errno', () => {
    const g = KvmGuest.create({ ramPages: 256, vcpus: 1, profile: 'cpl3', workload: 'idle' });
    try {
      const state = g.saveVcpuStates()[0];
      // Section 2 (SREGS) follows section 1 (REGS); clear EFER.LMA while
      // CR0.PG and EFER.LME stay set: an inconsistent long mode KVM refuses.
      const view = new DataView(state.buffer, state.byteOffset);
      const regsLen = view.getUint32(20, true);
      const sregsAt = 16 + 8 + regsLen + 8;
      // struct kvm_sregs: 8 segments of 24 bytes, gdt and idt of 16, cr0 cr2 cr3 cr4 cr8, then efer.
      const eferAt = sregsAt + 8 * 24 + 2 * 16 + 5 * 8;
      expect(view.getBigUint64(eferAt, true)).toBe(0x500n);
      view.setBigUint64(eferAt, 0x100n);
      let caught: unknown;
      try {
        g.loadVcpuStates([state]);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(KvmError);
      const e = caught as KvmError;
      expect(e.message).toBe('ioctl(KVM_SET_SREGS) on vCPU 0 failed: EINVAL');
      expect(e.errnoName).toBe('EINVAL');
      expect(e.errno).toBe(22);
    } finally {
      g.close();
    }
  });

  it.skipIf(skip)('misuse is refused with the field named, and a closed VM says so', () => {
    const g = KvmGuest.create({ ramPages: 256, vcpus: 2, profile: 'cpl3', workload: 'idle' });
    expect(() => g.harvestDirty(new PageBitmap(128))).toThrow(InvalidArgumentError);
    expect(() => g.loadVcpuStates([new Uint8Array(0)])).toThrow(/1 vCPU states for a guest of 2 vCPUs/);
    g.resume();
    expect(() => g.saveVcpuStates()).toThrow(/vCPU 0 is running; pause the VM/);
    g.close();
    expect(() => g.resume()).toThrow(/the VM is closed/);
  });
});
