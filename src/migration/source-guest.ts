/**
 * What the migration source needs of the guest it migrates: its memory, a
 * pause at a clean point, a resume, its vCPU state, and — for guests driven
 * in-thread by a seeded script — a chance to act at the engine's
 * interleaving points, so a race between guest and host is reproducible.
 */
import { PAGE_SIZE } from '../common/ranges.js';
import type { GuestMemory } from '../guest/guest-memory.js';
import type { VcpuPool } from '../guest/vcpu-pool.js';

/** Points in a live round where a scripted guest acts (DESIGN.md §3's five events interleave here). */
export type InterleavingPoint = 'round-start' | 'between-reads' | 'after-send';

export interface SourceGuest {
  readonly memory: GuestMemory;
  readonly vcpus: number;
  /** The guest's system generation (sysgenid counter). */
  generation: number;
  pause(): Promise<void>;
  resume(): void;
  readonly paused: boolean;
  tick(point: InterleavingPoint, round: number): void;
  /** One page of plaintext register state (the SEV-ES VMSA) per vCPU. */
  vcpuState(): Uint8Array;
}

/** Synthetic but deterministic VMSA contents derived from the guest's counters. */
export function syntheticVmsa(vcpus: number, seedWords: number[]): Uint8Array {
  const out = new Uint8Array(vcpus * PAGE_SIZE);
  const w = new Uint32Array(out.buffer);
  for (let v = 0; v < vcpus; v++) {
    for (let i = 0; i < PAGE_SIZE / 4; i++)
      w[v * (PAGE_SIZE / 4) + i] = (Math.imul(i + 1, 2654435761) ^ (seedWords[v] ?? v)) >>> 0;
  }
  return out;
}

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

  vcpuState(): Uint8Array {
    const s = this.pool.stats();
    return syntheticVmsa(this.vcpus, [s.writes, s.conversions, s.steps]);
  }
}
