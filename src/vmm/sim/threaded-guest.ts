/**
 * The `sim` backend's running guest: vCPUs are worker threads (VcpuPool)
 * running a workload over shared guest memory.
 */
import { KERNEL_ROOT_GFN } from '../../guest/kernel-area.js';
import type { SourceGuest } from '../backend.js';
import type { ConversionTap } from '../hypercall-backend.js';
import type { GuestMemory } from './guest-memory.js';
import type { VcpuPool } from './vcpu-pool.js';
import { encodeVcpuState } from './vcpu-state.js';

/** A guest whose vCPUs are worker threads running a workload (the sim backend). */
export class ThreadedGuest implements SourceGuest {
  generation = 0;
  private isPaused = false;

  constructor(
    readonly memory: GuestMemory,
    readonly pool: VcpuPool,
  ) {}

  get vcpus(): number {
    return this.pool.options.vcpus;
  }

  async pause(): Promise<void> {
    await this.pool.pause();
    this.isPaused = true;
  }

  resume(): void {
    this.pool.resume();
    this.isPaused = false;
  }

  get paused(): boolean {
    return this.isPaused;
  }

  tick(): void {}

  drainExits(): Promise<void> {
    return this.pool.drainExits();
  }

  tapConversions(tap: ConversionTap | undefined): void {
    this.pool.options.backend.tap = tap;
  }

  /** The vCPUs' registers (vcpu-state.ts); read while paused, they are what the vCPUs resume from. */
  vcpuState(): Uint8Array {
    const { workload, seed } = this.pool.options;
    return encodeVcpuState(
      Array.from({ length: this.vcpus }, (_, vcpu) => ({
        vcpu,
        pageTableRoot: KERNEL_ROOT_GFN,
        workload,
        seed,
        ...this.pool.vcpuStats(vcpu),
      })),
    );
  }
}
