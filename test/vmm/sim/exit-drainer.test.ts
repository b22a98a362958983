/**
 * The exit drainer's failure rule (src/vmm/sim/exit-drainer.ts): a backend
 * that fails (a killed service) leaves its changes in the rings. A later
 * drain must neither forward nor release anything past the failed batch, or
 * changes the guest was told are recorded would reach nobody.
 */
import { describe, expect, it } from 'vitest';
import type { HypercallBackend, ValidatedChange } from '../../../src/vmm/hypercall-backend.js';
import { ExitDrainer } from '../../../src/vmm/sim/exit-drainer.js';
import { createExitRings, RingConsumer, RingProducer } from '../../../src/vmm/sim/exit-rings.js';

/** A backend whose first batch fails; it records every batch it accepted. */
function failingOnce(): { backend: HypercallBackend; applied: number[] } {
  const applied: number[] = [];
  let calls = 0;
  const backend = {
    cpuidFeatures: 0,
    hypercall: async () => 0,
    setMigrationControl: async () => {},
    getMigrationControl: async () => 0n,
    applyValidated(_vm: number, changes: ValidatedChange[]) {
      calls++;
      if (calls === 1) return Promise.reject(new Error('the service is gone'));
      applied.push(...changes.map((c) => c.gfn));
      return Promise.resolve();
    },
  } as unknown as HypercallBackend;
  return { backend, applied };
}

describe('exit drainer', () => {
  it('after a failed batch, later drains fail too and release nothing: the changes stay in the rings', async () => {
    const d = createExitRings(1, 8);
    const vcpu = new RingProducer(d, 0);
    const consumer = new RingConsumer(d);
    const { backend, applied } = failingOnce();
    const errors: Error[] = [];
    const drainer = new ExitDrainer(consumer, backend, 1, (e) => errors.push(e));
    vcpu.push(1, 1, false);
    vcpu.push(2, 1, false);
    await expect(drainer.drain()).rejects.toThrow('the service is gone');
    vcpu.push(3, 1, true);
    await expect(drainer.drain()).rejects.toThrow('the service is gone');
    expect(applied).toEqual([]); // gfn 3 was not forwarded past the lost 1 and 2
    expect(consumer.pending).toBe(3); // nothing handed back to the vCPU as held
    await expect(drainer.stop()).rejects.toThrow('the service is gone');
  });
});
