/**
 * The VMM backend interface: what the migration engine needs of the guest it
 * migrates, whichever backend runs it (`sim` worker threads over shared
 * memory; `kvm` a real VM). The migration source needs: its memory, a
 * pause at a clean point, a resume, its vCPU state, and — for guests driven
 * in-thread by a seeded script — a chance to act at the engine's
 * interleaving points, so a race between guest and host is reproducible.
 */
import { PAGE_SIZE } from '../common/ranges.js';
import type { ConversionTap } from './hypercall-backend.js';
import type { GuestMemory } from './sim/guest-memory.js';

/** Points in a live round where a scripted guest acts (docs/design.md's five events interleave here). */
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
  /**
   * Moves every c-bit change whose hypercall has returned into the tracker
   * (the vCPUs' exit rings); resolves once the tracker holds them. A sync
   * calls this first (docs/design.md, threading).
   */
  drainExits(): Promise<void>;
  /** Hands every change the tracker applies from now on to `tap` (undefined: stop). */
  tapConversions(tap: ConversionTap | undefined): void;
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
