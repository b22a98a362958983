/**
 * Guest workloads, all seeded: what the vCPUs of a simulated guest do
 * between pauses. Each vCPU owns a partition of guest memory (a guest kernel
 * never converts one buffer from two CPUs at once); pools shared by all
 * (swiotlb) are set up by vCPU 0 before the others start.
 *
 * - idle: nothing.
 * - boot: a firmware-style storm of single-page conversions to shared (~20k,
 *   fewer on small guests), each page then written, then idle.
 * - swiotlb: a bounce-buffer pool of 6% of memory converted to shared once,
 *   then I/O writing shared pages of the pool, and some private writes.
 * - churn: DMA buffers (1-16 pages) converted back and forth, rewritten after
 *   most conversions (not all: a converted page that is not rewritten holds
 *   undefined data).
 * - write-heavy: random writes to encrypted pages.
 * - mixed: a short boot storm, the swiotlb pool, then writes, I/O and churn.
 */
import { InvalidArgumentError } from '../common/errors.js';
import { PAGE_SIZE } from '../common/ranges.js';
import { type Rng, randomInt } from '../common/rng.js';
import type { GuestKernel } from './guest-kernel.js';
import type { GuestMemoryView, WorkloadStats } from './guest-memory-view.js';

export const WORKLOADS = ['idle', 'boot', 'swiotlb', 'churn', 'write-heavy', 'mixed'] as const;
export type WorkloadName = (typeof WORKLOADS)[number];

export function parseWorkload(name: string): WorkloadName {
  if (!(WORKLOADS as readonly string[]).includes(name)) {
    throw new InvalidArgumentError('--workload', `workload "${name}" is not one of ${WORKLOADS.join(', ')}`);
  }
  return name as WorkloadName;
}

export interface WorkloadContext {
  memory: GuestMemoryView;
  kernel: GuestKernel;
  rng: Rng;
  vcpu: number;
  vcpus: number;
  stats: WorkloadStats;
  /** Optional per-page write counters (tests). */
  counters?: Int32Array;
}

/** The guest-memory layout every vCPU derives the same way. */
export interface Layout {
  /** The swiotlb pool (6% of memory, 2 MiB aligned), at the top of memory. */
  pool: { gfn: number; npages: number };
  /** This vCPU's private partition. */
  part: { gfn: number; npages: number };
}

export function layout(npages: number, vcpu: number, vcpus: number): Layout {
  const raw = Math.max(1, Math.floor(npages * 0.06));
  const poolPages = raw >= 512 ? raw - (raw % 512) : raw;
  const poolGfn = npages - poolPages;
  const per = Math.floor(poolGfn / vcpus);
  return { pool: { gfn: poolGfn, npages: poolPages }, part: { gfn: vcpu * per, npages: per } };
}

/** A guest workload: setup (vCPU 0 runs it before the others start) and one step. */
export interface Workload {
  setup?(ctx: WorkloadContext, l: Layout): void;
  /** One unit of guest work; returns how many page operations it did (for pacing). */
  step(ctx: WorkloadContext, l: Layout, state: Record<string, unknown>): number;
}

const page = new Uint8Array(PAGE_SIZE);
const words = new Uint32Array(page.buffer);
let generation = 0;

/** Writes a recognisable page: gfn, vCPU, a per-thread counter, repeated. */
export function writePattern(ctx: WorkloadContext, gfn: number): void {
  generation = (generation + 1) >>> 0;
  words.fill((gfn * 2654435761 + generation) >>> 0);
  words[0] = gfn >>> 0;
  words[1] = ctx.vcpu;
  words[2] = generation;
  ctx.memory.writePage(gfn, page);
  if (ctx.counters) Atomics.add(ctx.counters, gfn, 1);
  ctx.stats.wrote(1);
}

function convert(ctx: WorkloadContext, gfn: number, npages: number, encrypted: boolean): void {
  if (encrypted) ctx.kernel.setMemoryEncrypted(gfn * PAGE_SIZE, npages);
  else ctx.kernel.setMemoryDecrypted(gfn * PAGE_SIZE, npages);
  ctx.stats.converted(1);
}

function bootStorm(ctx: WorkloadContext, l: Layout, count: number): void {
  const n = Math.min(count, Math.floor(l.pool.gfn / 4));
  for (let i = 0; i < n; i++) {
    const gfn = randomInt(ctx.rng, l.pool.gfn);
    convert(ctx, gfn, 1, false);
    writePattern(ctx, gfn);
  }
}

function setupPool(ctx: WorkloadContext, l: Layout): void {
  convert(ctx, l.pool.gfn, l.pool.npages, false);
}

function privateWrite(ctx: WorkloadContext, l: Layout): void {
  const gfn = l.part.gfn + randomInt(ctx.rng, l.part.npages);
  writePattern(ctx, gfn);
}

function ioWrite(ctx: WorkloadContext, l: Layout): void {
  writePattern(ctx, l.pool.gfn + randomInt(ctx.rng, l.pool.npages));
}

/** DMA buffers in the last eighth of this vCPU's partition, converted back and forth. */
function churnStep(ctx: WorkloadContext, l: Layout): number {
  const region = Math.max(16, Math.floor(l.part.npages / 8));
  const base = l.part.gfn + l.part.npages - region;
  const slots = Math.floor(region / 16);
  const slot = randomInt(ctx.rng, slots);
  const npages = 1 + randomInt(ctx.rng, 16);
  const gfn = base + slot * 16;
  const toShared = ctx.memory.isEncrypted(gfn);
  convert(ctx, gfn, npages, !toShared);
  // Usually the driver fills the buffer after converting it; sometimes not.
  if (ctx.rng() < 0.9) for (let i = 0; i < npages; i++) writePattern(ctx, gfn + i);
  return npages + 1;
}

export const workloads: Record<WorkloadName, Workload> = {
  idle: { step: () => 0 },
  boot: {
    setup: (ctx, l) => bootStorm(ctx, l, 20_000),
    step: () => 0,
  },
  swiotlb: {
    setup: setupPool,
    step(ctx, l) {
      for (let i = 0; i < 8; i++) ioWrite(ctx, l);
      privateWrite(ctx, l);
      return 9;
    },
  },
  churn: { step: (ctx, l) => churnStep(ctx, l) },
  'write-heavy': {
    step(ctx, l) {
      for (let i = 0; i < 16; i++) privateWrite(ctx, l);
      return 16;
    },
  },
  mixed: {
    setup(ctx, l) {
      bootStorm(ctx, l, 2_000);
      setupPool(ctx, l);
    },
    step(ctx, l) {
      const r = ctx.rng();
      if (r < 0.5) {
        for (let i = 0; i < 4; i++) privateWrite(ctx, l);
        return 4;
      }
      if (r < 0.8) {
        for (let i = 0; i < 4; i++) ioWrite(ctx, l);
        return 4;
      }
      return churnStep(ctx, l);
    },
  },
};
