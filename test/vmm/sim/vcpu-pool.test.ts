import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KVM_MIGRATION_READY } from '../../../src/common/kvm-abi.js';
import { PageBitmap } from '../../../src/common/page-bitmap.js';
import { kernelPages } from '../../../src/guest/kernel-area.js';
import type { WorkloadName } from '../../../src/guest/workloads.js';
import { CbitStore } from '../../../src/host/cbit-store.js';
import { InProcessBackend, UnsupportedBackend } from '../../../src/vmm/hypercall-backend.js';
import { GuestMemory } from '../../../src/vmm/sim/guest-memory.js';
import { IDLE_TICK_MS } from '../../../src/vmm/sim/vcpu-control.js';
import { VcpuPool } from '../../../src/vmm/sim/vcpu-pool.js';
import { openBackend } from '../../support/backends.js';
import { tempDir } from '../../support/tmp.js';
import { waitFor } from '../../support/wait.js';

const pools: VcpuPool[] = [];
afterEach(async () => {
  for (const p of pools.splice(0)) await p.stop();
});

/** The guest's own c-bit table as ranges, for comparison with the host's. */
function guestRanges(mem: GuestMemory) {
  const enc = mem.cbits.runs().map((r) => ({ ...r, encrypted: true }));
  const out = [];
  let pos = 0;
  for (const r of enc) {
    if (r.gfn > pos) out.push({ gfn: pos, npages: r.gfn - pos, encrypted: false });
    out.push(r);
    pos = r.gfn + r.npages;
  }
  if (pos < mem.npages) out.push({ gfn: pos, npages: mem.npages - pos, encrypted: false });
  return out;
}

describe('simulated vCPUs', () => {
  it('the dirty log loses no write of two concurrent writer threads across harvests', async () => {
    const npages = 4096;
    const mem = GuestMemory.create(npages);
    const store = CbitStore.open(join(tempDir(), 'h.db'));
    store.registerVm(1, npages);
    const counters = new SharedArrayBuffer(npages * 4);
    const pool = VcpuPool.start({
      memory: mem,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus: 2,
      workload: 'churn',
      seed: 3,
      opsPerMs: 0,
      counters,
    });
    pools.push(pool);
    const seen = new PageBitmap(npages);
    // Harvest while the writers run: after each harvest, wait until they
    // wrote again, so every harvest races live writers; stop after 6000
    // steps (3000 per vCPU) and at least three harvests that caught writes.
    let harvests = 0;
    for (;;) {
      const round = new PageBitmap(npages);
      mem.dirty.harvestInto(round);
      seen.or(round);
      if (round.count() > 0) harvests++;
      if (harvests >= 3 && pool.stats().steps >= 6000) break;
      const writes = pool.stats().writes;
      await waitFor(() => pool.stats().writes > writes, 'the vCPUs to write again');
    }
    const stats = await pool.stop();
    mem.dirty.harvestInto(seen);
    const perPage = new Int32Array(counters);
    let total = 0;
    // The kernel's own area (c-bit table, heartbeat) is written by the kernel, not the workload.
    const kernel = kernelPages(npages);
    for (let gfn = 0; gfn < kernel; gfn++) expect(seen.test(gfn)).toBe(true);
    for (let gfn = kernel; gfn < npages; gfn++) {
      total += perPage[gfn];
      expect(seen.test(gfn)).toBe(perPage[gfn] > 0);
    }
    expect(total).toBe(stats.writes);
    expect(stats.conversions).toBeGreaterThan(100);
    store.close();
  });

  it('the same seeded workload over the in-process and the socket transports leaves the same c-bit state', async () => {
    const npages = 8192;
    const results = [];
    for (const transport of ['inproc', 'unix'] as const) {
      const dir = tempDir();
      const store = CbitStore.open(join(dir, 'h.db'));
      store.registerVm(1, npages);
      const { backend, close } = await openBackend(transport, store, dir);
      const mem = GuestMemory.create(npages);
      const workload: WorkloadName = 'mixed';
      const pool = VcpuPool.start({
        memory: mem,
        backend,
        vm: 1,
        vcpus: 2,
        workload,
        seed: 11,
        opsPerMs: 0,
        maxSteps: 400,
      });
      pools.push(pool);
      const stats = await pool.finished();
      await close();
      // The guest reported every change: the host's state is the guest's own table.
      expect([...store.state(1).ranges()]).toEqual(guestRanges(mem));
      expect(store.migrationControl(1)).toBe(KVM_MIGRATION_READY);
      results.push({ ranges: [...store.state(1).ranges()], conversions: stats.conversions });
      store.close();
    }
    expect(results[0].conversions).toBeGreaterThan(100);
    expect(results[1]).toEqual(results[0]);
  });

  it('a host without the hypercall: the guest stops notifying and never says READY', async () => {
    const mem = GuestMemory.create(2048);
    const backend = new UnsupportedBackend(0b11 << 16);
    const pool = VcpuPool.start({
      memory: mem,
      backend,
      vm: 1,
      vcpus: 1,
      workload: 'boot',
      seed: 1,
      maxSteps: 1,
    });
    pools.push(pool);
    await pool.finished();
    expect(pool.migrationSupported).toBe(false);
    expect(await backend.getMigrationControl()).toBe(0n);
  });

  it('pause parks every vCPU at a clean point: no write lands until resume', async () => {
    const mem = GuestMemory.create(4096);
    const store = CbitStore.open(join(tempDir(), 'h.db'));
    store.registerVm(1, 4096);
    const pool = VcpuPool.start({
      memory: mem,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus: 2,
      workload: 'mixed',
      seed: 5,
    });
    pools.push(pool);
    await pool.waitSetup();
    await waitFor(() => pool.stats().writes > 0, 'the vCPUs to write');
    await pool.pause();
    expect(pool.paused).toBe(true);
    const before = pool.stats();
    mem.dirty.harvestInto(new PageBitmap(4096));
    const seqBefore = store.info(1).lastSeq;
    // The one sleep that stays: it is the thing under test (no write lands
    // while paused); a slow machine only makes it catch less, never fail.
    await new Promise((r) => setTimeout(r, 50));
    expect(mem.dirty.count()).toBe(0);
    expect(pool.stats()).toEqual(before);
    expect(store.info(1).lastSeq).toBe(seqBefore);
    pool.resume();
    await waitFor(() => pool.stats().writes > before.writes, 'a write after resume');
    expect(pool.stats().writes).toBeGreaterThan(before.writes);
    await pool.stop();
    store.close();
  });

  /** An idle guest of 2 vCPUs whose every vCPU has taken its first step (and halted). */
  async function idlePool(idleTickMs?: number) {
    const mem = GuestMemory.create(4096);
    const store = CbitStore.open(join(tempDir(), 'h.db'));
    store.registerVm(1, 4096);
    const vcpus = 2;
    const pool = VcpuPool.start({
      memory: mem,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus,
      workload: 'idle',
      seed: 2,
      idleTickMs,
    });
    pools.push(pool);
    await pool.waitSetup();
    await waitFor(() => pool.stats().steps >= vcpus, 'every vCPU to take its first step and halt');
    return { pool, store, vcpus };
  }

  it('an idle vCPU steps no more often than its idle tick', async () => {
    const { pool, store, vcpus } = await idlePool();
    // A bound on the wake rate, not on speed: a halted vCPU cannot step more
    // often than its tick, and a slow machine only makes it step less. With
    // a 1 ms halt the vCPUs took about ten times the bound.
    const before = pool.stats().steps;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 200));
    const steps = pool.stats().steps - before;
    const elapsed = performance.now() - t0;
    expect(steps).toBeLessThanOrEqual(vcpus * (Math.ceil(elapsed / IDLE_TICK_MS) + 1));
    await waitFor(() => pool.stats().steps > before, 'the idle vCPUs to step again');
    await pool.stop();
    store.close();
  });

  it('a pause, a resume and a stop wake halted vCPUs at once, not at their next idle tick', async () => {
    // Halted for ten minutes a step: a wake-up that missed the vCPUs would
    // hang pause() or stop() past the test's own timeout.
    const { pool, store, vcpus } = await idlePool(600_000);
    await pool.pause();
    expect(pool.paused).toBe(true);
    const parked = pool.stats().steps;
    pool.resume();
    // Each vCPU leaves its clean point, takes one step and halts again.
    await waitFor(() => pool.stats().steps >= parked + vcpus, 'a step from each vCPU after resume');
    await pool.stop();
    expect(pool.stats().steps).toBe(parked + vcpus);
    store.close();
  }, 20_000);

  it('a cancel ends the wait for setup with its reason, and stop({ now }) ends vCPUs still in setup', async () => {
    // 'boot' runs 20,000 conversions in vCPU 0's setup before any vCPU reaches a clean point.
    const npages = 262_144;
    const mem = GuestMemory.create(npages);
    const store = CbitStore.open(join(tempDir(), 'h.db'));
    store.registerVm(1, npages);
    const pool = VcpuPool.start({
      memory: mem,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus: 2,
      workload: 'boot',
      seed: 9,
    });
    const controller = new AbortController();
    const reason = new Error('cancelled by the test');
    const waiting = pool.waitSetup(controller.signal);
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    const stats = await pool.stop({ now: true });
    // Abandoned during its boot storm: the storm did not finish.
    expect(stats.conversions).toBeLessThan(20_000);
    expect(pool.paused).toBe(false);
    store.close();
  });
});
