/** Helpers for tests on a real KVM guest. */
import { kvmLayout } from '../../../src/vmm/kvm/control-page.js';
import { KvmGuest, type KvmGuestOptions } from '../../../src/vmm/kvm/kvm-guest.js';

/**
 * A guest's VM booted with `options`, and an empty twin of the same size,
 * vCPUs and key (boot: false) for copyVm to continue it on.
 */
export function twinVms(options: KvmGuestOptions & { key: Uint8Array }): { from: KvmGuest; to: KvmGuest } {
  const from = KvmGuest.create(options);
  const { ramPages, vcpus, profile, workload, key } = options;
  const to = KvmGuest.create({ ramPages, vcpus, profile, workload, key, boot: false });
  return { from, to };
}

/** Copies a paused VM's memory and vCPU state into its twin (a migration without the engine). */
export function copyVm(from: KvmGuest, to: KvmGuest): void {
  const states = from.saveVcpuStates();
  to.ram.set(from.ram);
  to.loadVcpuStates(states);
}

/**
 * Resolves once cond() holds, checking on every timer turn; rejects after
 * timeoutMs (an upper bound against a hang, never a synchronisation point).
 */
export async function until(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** vCPU v's partition of the data area, computed as native/guest/helper.c does. */
export function partition(ramPages: number, vcpus: number, v: number): { gfn: number; npages: number } {
  const base = kvmLayout().dataGpa / 4096;
  const data = ramPages - base;
  const pool = Math.max(1, Math.floor((data * 6) / 100));
  const per = Math.floor((ramPages - pool - base) / vcpus);
  return { gfn: base + v * per, npages: per };
}
