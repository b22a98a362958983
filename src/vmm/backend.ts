/**
 * The VMM backend interface: what the migration engine needs of the guest it
 * migrates, whichever backend runs it (`sim` worker threads over shared
 * memory; `kvm` a real VM). The migration source needs: its memory, a
 * pause at a clean point, a resume, its vCPU state, and — for guests driven
 * in-thread by a seeded script — a chance to act at the engine's
 * interleaving points, so a race between guest and host is reproducible.
 * The destination needs a memory of the same kind to receive into, and a
 * hook that takes the vCPU state once every page is in.
 */
import type { PageBitmap } from '../common/page-bitmap.js';
import type { MemoryCodec } from '../common/page-crypto.js';
import { PAGE_SIZE } from '../common/ranges.js';
import type { ConversionTap } from './hypercall-backend.js';

/** The backends (`--backend`); the HELLO names the source's, numbered in this order. */
export const BACKENDS = ['sim', 'kvm'] as const;
export type BackendName = (typeof BACKENDS)[number];

/**
 * A guest's memory as the migration engine sees it, whichever backend holds
 * it. The engine reads and writes only `bytes` (raw, as the host sees them);
 * only the PSP model and the verifier turn them into the guest's view, with
 * `codec` (the backend's memory-encryption model and the VM's key).
 */
export interface MigratableMemory {
  readonly backend: BackendName;
  readonly npages: number;
  /** The raw bytes of guest RAM (a SharedArrayBuffer for sim, an external ArrayBuffer for kvm). */
  readonly bytes: Uint8Array;
  /** The VM's memory key (never leaves the "hardware" but for the PSP model). */
  readonly key: Uint8Array;
  /** The memory-encryption model and `key`: what the page pipeline decrypts and encrypts with. */
  readonly codec: MemoryCodec;
  /**
   * The guest's own c-bit per page (1 = encrypted), as the next guest access
   * uses it: a live view (sim: the TLB) or read now from the guest's table in
   * memory (kvm). Take a clone before hashing under it while the guest runs.
   */
  readonly cbits: PageBitmap;
  /**
   * Pages whose content is defined: written since their last conversion
   * (verification mode `defined`, docs/design.md §3). A backend that cannot
   * tell sets every page (then `defined` compares as much as `strict`).
   */
  readonly written: PageBitmap;
  /**
   * ORs the pages written since the last harvest into `out` and clears them
   * in the dirty log; returns how many were set. Pages are copied only after
   * this returns, so a racing write is in the copy or in the next harvest.
   */
  harvestDirty(out: PageBitmap): number;
  /** How many pages the next harvest returns at least (for the downtime estimate; it loses no dirty bit). */
  dirtyCount(): number;
  /** A destination before any page arrived: no page is known private (its table arrives with its memory). */
  clearCbits(): void;
  /**
   * A destination once every page and the vCPU state (`pages` pages per vCPU,
   * vcpus of them) arrived: checks and takes the state as the backend resumes
   * from it, and refills the c-bit view from the guest's own table in the
   * migrated memory. Returns that table. Throws a SevtrackError naming what
   * is malformed.
   */
  restoreVcpuState(state: Uint8Array, vcpus: number): PageBitmap;
  /** Releases what the guest holds beyond garbage-collected memory (a VM: its vCPU threads and file descriptors). Idempotent. */
  close(): void;
}

/** Points in a live round where a scripted guest acts (docs/design.md's five events interleave here). */
export type InterleavingPoint = 'round-start' | 'between-reads' | 'after-send';

export interface SourceGuest {
  readonly memory: MigratableMemory;
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
  /**
   * The plaintext register state (the SEV-ES VMSA) of every vCPU, read while
   * paused: the same whole number of pages per vCPU (one for sim; kvm's
   * saved state spans two), vCPU 0's first.
   */
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
