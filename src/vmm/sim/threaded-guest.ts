/**
 * The `sim` backend's running guest: vCPUs are worker threads (VcpuPool)
 * running a workload over shared guest memory.
 */
import { type SourceGuest, syntheticVmsa } from '../backend.js';
import type { ConversionTap } from '../hypercall-backend.js';
import type { GuestMemory } from './guest-memory.js';
import type { VcpuPool } from './vcpu-pool.js';

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

  vcpuState(): Uint8Array {
    const s = this.pool.stats();
    return syntheticVmsa(this.vcpus, [s.writes, s.conversions, s.steps]);
  }
}
