/**
 * The per-vCPU exit rings: changes come out in ticket order across rings,
 * slots go back only on release, a full ring makes the vCPU wait (never
 * drops), and a sync-style drain sees every change whose call returned.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CbitStore } from '../../../src/host/cbit-store.js';
import { InProcessBackend } from '../../../src/vmm/hypercall-backend.js';
import { createExitRings, RingConsumer, RingProducer } from '../../../src/vmm/sim/exit-rings.js';
import { GuestMemory } from '../../../src/vmm/sim/guest-memory.js';
import { VcpuPool } from '../../../src/vmm/sim/vcpu-pool.js';
import { tempDir } from '../../support/tmp.js';

describe('exit rings', () => {
  it('hand out the changes of every ring in ticket order, once', () => {
    const d = createExitRings(2, 8);
    const v0 = new RingProducer(d, 0);
    const v1 = new RingProducer(d, 1);
    const c = new RingConsumer(d);
    v0.push(10, 1, false); // vCPU 0 converts gfn 10 to shared...
    v1.push(10, 1, true); // ...then vCPU 1 converts it back: this must win
    v0.push(11, 2, true);
    const t = c.take();
    expect(t.changes).toEqual([
      { gfn: 10, npages: 1, encrypted: false, vcpu: 0 },
      { gfn: 10, npages: 1, encrypted: true, vcpu: 1 },
      { gfn: 11, npages: 2, encrypted: true, vcpu: 0 },
    ]);
    expect(c.take().changes).toEqual([]); // taken once
    expect(c.pending).toBe(3); // but held until released
    c.release(t.mark);
    expect(c.pending).toBe(0);
  });

  it('a vCPU thread whose ring is full waits for the tracker and loses nothing', async () => {
    const npages = 4096;
    const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
    store.registerVm(1, npages);
    const memory = GuestMemory.create(npages);
    const pool = VcpuPool.start({
      memory,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus: 2,
      workload: 'churn',
      seed: 9,
      opsPerMs: 0,
      maxSteps: 500,
      ringCapacity: 2, // every few conversions fill it
    });
    const stats = await pool.finished();
    expect(stats.conversions).toBeGreaterThan(500);
    expect(pool.drainedChanges).toBe(store.info(1).lastSeq);
    // Every change arrived, in order: the host's state is the guest's own table.
    const host = store.state(1);
    for (let g = 0; g < npages; g++) expect(host.isEncrypted(g), `gfn ${g}`).toBe(memory.isEncrypted(g));
    store.close();
  });

  it('rejects a ring capacity that is not a power of two', () => {
    const memory = GuestMemory.create(64);
    const store = CbitStore.open(join(tempDir(), 'h.db'));
    store.registerVm(1, 64);
    expect(() =>
      VcpuPool.start({
        memory,
        backend: new InProcessBackend(store),
        vm: 1,
        vcpus: 1,
        workload: 'idle',
        seed: 1,
        ringCapacity: 3,
      }),
    ).toThrow(/ringCapacity 3 must be a power of two/);
    store.close();
  });
});
