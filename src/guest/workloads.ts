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
import { kernelPages } from './kernel-area.js';

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
  /** The swiotlb pool at the top of memory (0 pages for workloads that do no I/O on tiny guests). */
  pool: { gfn: number; npages: number };
  /** This vCPU's private partition; empty (npages 0) when there are more vCPUs than private pages. */
  part: { gfn: number; npages: number };
}

/** The workloads that bounce I/O through the swiotlb pool. */
const POOL_WORKLOADS: ReadonlySet<WorkloadName> = new Set(['swiotlb', 'mixed']);

/**
 * Splits npages of guest memory for `workload` (any npages >= 1, any vcpus >= 1),
 * after the kernel's own area (kernelPages(npages) pages from gfn 0):
 * - the pool is 6% of memory (2 MiB aligned from 512 pages), at the top; a
 *   workload that uses it gets at least one page when any is left after the
 *   kernel area, so on a two-page guest the pool is the page after the
 *   kernel's and every partition is empty (a one-page guest is all kernel);
 * - the rest is split evenly into disjoint vCPU partitions (a remainder stays
 *   unused); with fewer pages than vCPUs, the first vCPUs get one page each
 *   and the others none. Partitions never overlap, so no two vCPUs ever
 *   convert one buffer (the guest contract of docs/design.md §3 rule 5).
 * From 17 pages up the layout does not depend on the workload.
 */
export function layout(npages: number, vcpu: number, vcpus: number, workload?: WorkloadName): Layout {
  if (!Number.isInteger(npages) || npages < 1)
    throw new InvalidArgumentError('npages', `guest size ${npages} pages must be at least 1`);
  if (!Number.isInteger(vcpus) || vcpus < 1 || !Number.isInteger(vcpu) || vcpu < 0 || vcpu >= vcpus)
    throw new InvalidArgumentError('vcpu', `vCPU ${vcpu} of ${vcpus} is not a vCPU of this guest`);
  // The kernel's own area (its c-bit table, kernel-area.ts) comes first and is never touched.
  const base = kernelPages(npages);
  const usable = npages - base;
  const raw = Math.floor(npages * 0.06);
  const minPool = usable > 0 && (workload === undefined || POOL_WORKLOADS.has(workload)) ? 1 : 0;
  const poolPages = Math.min(usable, raw >= 512 ? raw - (raw % 512) : Math.max(minPool, raw));
  const poolGfn = npages - poolPages;
  const per = Math.floor((poolGfn - base) / vcpus);
  const part =
    per > 0
      ? { gfn: base + vcpu * per, npages: per }
      : base + vcpu < poolGfn
        ? { gfn: base + vcpu, npages: 1 }
        : { gfn: poolGfn, npages: 0 };
  return { pool: { gfn: poolGfn, npages: poolPages }, part };
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

/** Up to `count` single-page conversions to shared between the kernel area and the pool (one per 4 pages, at least one). */
function bootStorm(ctx: WorkloadContext, l: Layout, count: number): void {
  const base = kernelPages(ctx.memory.npages);
  const span = l.pool.gfn - base;
  const n = span <= 0 ? 0 : Math.min(count, Math.max(1, Math.floor(span / 4)));
  for (let i = 0; i < n; i++) {
    const gfn = base + randomInt(ctx.rng, span);
    convert(ctx, gfn, 1, false);
    writePattern(ctx, gfn);
  }
}

function setupPool(ctx: WorkloadContext, l: Layout): void {
  if (l.pool.npages > 0) convert(ctx, l.pool.gfn, l.pool.npages, false);
}

/** Writes one page of this vCPU's partition; returns the pages written (0 for an empty partition). */
function privateWrite(ctx: WorkloadContext, l: Layout): number {
  if (l.part.npages === 0) return 0;
  writePattern(ctx, l.part.gfn + randomInt(ctx.rng, l.part.npages));
  return 1;
}

/** Writes one page of the pool; returns the pages written (0 without a pool). */
function ioWrite(ctx: WorkloadContext, l: Layout): number {
  if (l.pool.npages === 0) return 0;
  writePattern(ctx, l.pool.gfn + randomInt(ctx.rng, l.pool.npages));
  return 1;
}

/**
 * DMA buffers in the last eighth of this vCPU's partition (at least 16
 * pages, at most the whole partition), in slots of 16 pages (fewer on a
 * smaller partition), converted back and forth. Returns the operations done.
 */
function churnStep(ctx: WorkloadContext, l: Layout): number {
  if (l.part.npages === 0) return 0;
  const region = Math.min(l.part.npages, Math.max(16, Math.floor(l.part.npages / 8)));
  const base = l.part.gfn + l.part.npages - region;
  const slotPages = Math.min(16, region);
  const slots = Math.floor(region / slotPages);
  const slot = randomInt(ctx.rng, slots);
  const npages = 1 + randomInt(ctx.rng, slotPages);
  const gfn = base + slot * slotPages;
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
      let ops = 0;
      for (let i = 0; i < 8; i++) ops += ioWrite(ctx, l);
      return ops + privateWrite(ctx, l);
    },
  },
  churn: { step: (ctx, l) => churnStep(ctx, l) },
  'write-heavy': {
    step(ctx, l) {
      let ops = 0;
      for (let i = 0; i < 16; i++) ops += privateWrite(ctx, l);
      return ops;
    },
  },
  mixed: {
    setup(ctx, l) {
      bootStorm(ctx, l, 2_000);
      setupPool(ctx, l);
    },
    step(ctx, l) {
      const r = ctx.rng();
      let ops = 0;
      if (r < 0.5) {
        for (let i = 0; i < 4; i++) ops += privateWrite(ctx, l);
        return ops;
      }
      if (r < 0.8) {
        for (let i = 0; i < 4; i++) ops += ioWrite(ctx, l);
        return ops;
      }
      return churnStep(ctx, l);
    },
  },
};
