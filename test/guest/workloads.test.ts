import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/common/rng.js';
import { GuestKernel } from '../../src/guest/guest-kernel.js';
import { kernelPages } from '../../src/guest/kernel-area.js';
import { layout, WORKLOADS, type WorkloadContext, workloads } from '../../src/guest/workloads.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { DirectPort } from '../../src/vmm/direct-port.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { tempDir } from '../support/tmp.js';

describe('layout', () => {
  it('gives disjoint partitions below the pool, inside memory, for any size and vCPU count', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1 << 20 }),
        fc.integer({ min: 1, max: 64 }),
        fc.constantFrom(...WORKLOADS),
        (npages, vcpus, workload) => {
          const owner = new Map<number, number>(); // partition start -> vCPU
          const parts = Array.from({ length: vcpus }, (_, v) => layout(npages, v, vcpus, workload));
          const { pool } = parts[0];
          expect(pool.gfn + pool.npages).toBe(npages);
          const base = kernelPages(npages);
          const poolWorkload = workload === 'swiotlb' || workload === 'mixed';
          expect(pool.npages).toBeGreaterThanOrEqual(poolWorkload && npages > base ? 1 : 0);
          expect(pool.gfn).toBeGreaterThanOrEqual(base); // the kernel's c-bit table is never given out
          let used = 0;
          for (const [v, l] of parts.entries()) {
            expect(l.pool).toEqual(pool); // every vCPU derives the same pool
            if (l.part.npages > 0) expect(l.part.gfn).toBeGreaterThanOrEqual(base);
            expect(l.part.npages).toBeGreaterThanOrEqual(0);
            expect(l.part.gfn + l.part.npages).toBeLessThanOrEqual(pool.gfn);
            used += l.part.npages;
            if (l.part.npages > 0) owner.set(l.part.gfn, v);
          }
          // Disjoint: sorted by gfn, each non-empty partition ends before the next starts.
          const starts = [...owner.keys()].sort((x, y) => x - y);
          for (let i = 1; i < starts.length; i++) {
            const prev = parts[owner.get(starts[i - 1])!].part;
            expect(prev.gfn + prev.npages).toBeLessThanOrEqual(starts[i]);
          }
          // Below the pool, pages stay unused only as the remainder of an even split.
          expect(pool.gfn - base - used).toBeLessThan(vcpus);
        },
      ),
    );
  });

  it('keeps the pool 2 MiB aligned from 512 pool pages up, and the layout of every workload the same from 17 pages up', () => {
    expect(layout(65536, 0, 2, 'mixed').pool).toEqual({ gfn: 65536 - 3584, npages: 3584 });
    fc.assert(
      fc.property(fc.integer({ min: 17, max: 1 << 22 }), fc.integer({ min: 1, max: 64 }), (npages, vcpus) => {
        const ref = layout(npages, vcpus - 1, vcpus, 'swiotlb');
        for (const w of WORKLOADS) expect(layout(npages, vcpus - 1, vcpus, w)).toEqual(ref);
        if (ref.pool.npages >= 512) expect(ref.pool.npages % 512).toBe(0);
      }),
    );
  });

  it('keeps a one-page guest for the kernel, gives the page after it to the pool or to vCPU 0, and empty partitions to the others', () => {
    expect(layout(1, 0, 1, 'churn')).toEqual({ pool: { gfn: 1, npages: 0 }, part: { gfn: 1, npages: 0 } });
    expect(layout(2, 0, 1, 'churn')).toEqual({ pool: { gfn: 2, npages: 0 }, part: { gfn: 1, npages: 1 } });
    expect(layout(2, 0, 1, 'swiotlb')).toEqual({ pool: { gfn: 1, npages: 1 }, part: { gfn: 1, npages: 0 } });
    expect(layout(2, 63, 64, 'write-heavy').part.npages).toBe(0);
    expect(layout(9, 7, 64, 'churn').part).toEqual({ gfn: 8, npages: 1 });
    expect(layout(9, 8, 64, 'churn').part.npages).toBe(0);
  });

  it('rejects a guest without pages and a vCPU outside the guest', () => {
    expect(() => layout(0, 0, 1)).toThrow(/guest size 0 pages must be at least 1/);
    expect(() => layout(16, 2, 2)).toThrow(/vCPU 2 of 2 is not a vCPU of this guest/);
  });
});

describe('workloads on tiny guests', () => {
  let store: CbitStore | undefined;
  afterEach(() => {
    store?.close();
    store = undefined;
  });

  /**
   * Runs a workload's setup and `steps` steps of every vCPU, one after the
   * other, against a real host store; returns the store, the guest and the
   * per-page write counts.
   */
  function drive(workload: (typeof WORKLOADS)[number], npages: number, vcpus: number, steps: number) {
    store?.close();
    store = CbitStore.open(join(tempDir(), 'host.db'));
    store.registerVm(1, npages);
    const memory = GuestMemory.create(npages);
    const counters = new Int32Array(npages);
    const stats = { wrote: () => {}, converted: () => {} };
    const ctxs: WorkloadContext[] = Array.from({ length: vcpus }, (_, vcpu) => ({
      memory,
      kernel: new GuestKernel(memory, new DirectPort(store!, 1)),
      rng: seededRandom(1000 + vcpu),
      vcpu,
      vcpus,
      stats,
      counters,
    }));
    ctxs[0].kernel.boot();
    for (const c of ctxs.slice(1)) c.kernel.attachTable();
    expect(ctxs[0].kernel.enableMigration()).toBe(true);
    const layouts = ctxs.map((c) => layout(npages, c.vcpu, vcpus, workload));
    workloads[workload].setup?.(ctxs[0], layouts[0]);
    for (let s = 0; s < steps; s++) {
      for (const c of ctxs)
        expect(workloads[workload].step(c, layouts[c.vcpu], {})).toBeGreaterThanOrEqual(0);
    }
    return { store: store!, memory, counters, ctxs, layouts };
  }

  for (const workload of WORKLOADS) {
    it(`${workload}: runs on two pages (one the kernel's) and on 64 vCPUs over 16 pages, reporting every change`, () => {
      for (const [npages, vcpus] of [
        [2, 1],
        [2, 8],
        [16, 64],
        [64, 64],
        [300, 7],
      ]) {
        const { store: host, memory, counters, ctxs, layouts } = drive(workload, npages, vcpus, 40);
        for (const c of ctxs) expect(c.kernel.rejectedNotifications).toBe(0);
        // The host's state is the guest's own page tables: every conversion was reported.
        for (let g = 0; g < npages; g++) expect(host.state(1).isEncrypted(g)).toBe(memory.isEncrypted(g));
        // The kernel's table in guest memory is the TLB's source: they agree after every operation.
        expect(memory.readPageTables(0).words).toEqual(memory.cbits.words);
        // Every write landed in memory the layout gives out.
        const owned = new Set<number>();
        for (const l of layouts) {
          for (let i = 0; i < l.part.npages; i++) owned.add(l.part.gfn + i);
          for (let i = 0; i < l.pool.npages; i++) owned.add(l.pool.gfn + i);
        }
        for (let g = 0; g < npages; g++)
          if (counters[g] > 0 && workload !== 'boot') expect(owned.has(g)).toBe(true);
        const writes = counters.reduce((a, b) => a + b, 0);
        if (workload === 'idle') expect(writes).toBe(0);
        else expect(writes, `${workload} at ${npages} pages, ${vcpus} vCPUs`).toBeGreaterThan(0);
      }
    });
  }
});
