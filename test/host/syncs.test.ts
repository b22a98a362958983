import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { advanceSync } from '../../src/host/syncs.js';
import { newVm } from '../../src/host/vm-state.js';

const NPAGES = 300;

const change = fc.record({
  gfn: fc.nat(NPAGES - 1),
  npages: fc.integer({ min: 1, max: 30 }),
  encrypted: fc.boolean(),
});

/** A VM synced after `before`, then changed by `since` (each recorded in its touched set). */
function vmWith(before: { gfn: number; npages: number; encrypted: boolean }[], since: typeof before) {
  const state = new PageStateMap(NPAGES, true);
  for (const c of before) state.apply(c.gfn, Math.min(c.npages, NPAGES - c.gfn), c.encrypted);
  const vm = newVm({
    id: 1,
    npages: NPAGES,
    initialEncrypted: true,
    migrationControl: 0n,
    state,
    lastSeq: before.length,
    lastSyncSeq: before.length,
    lastSyncState: state.clone(),
    checkpointSeq: 0,
  });
  for (const c of since) {
    const n = Math.min(c.npages, NPAGES - c.gfn);
    vm.state.apply(c.gfn, n, c.encrypted);
    vm.touched.add(c.gfn, n);
    vm.lastSeq++;
  }
  return vm;
}

describe('advanceSync', () => {
  it('gives the full diff whether it walks the touched windows or both maps whole', () => {
    fc.assert(
      fc.property(
        fc.array(change, { maxLength: 40 }),
        fc.array(change, { maxLength: 40 }),
        (before, since) => {
          const full = vmWith(before, since);
          const expected = full.lastSyncState.diff(full.state);
          // 0: a window costs nothing, always windowed; Infinity: always whole (but with no change).
          for (const windowCost of [0, Number.POSITIVE_INFINITY]) {
            const vm = vmWith(before, since);
            const r = advanceSync(vm, windowCost);
            expect(r.delta).toEqual(expected);
            expect(r.previousSeq).toBe(before.length);
            expect(r.seq).toBe(before.length + since.length);
            expect(r.state.equals(vm.state)).toBe(true);
            // The next sync starts from here: nothing changed since.
            expect(advanceSync(vm, windowCost).delta).toEqual([]);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('walks both maps whole once the touched windows would cost more', () => {
    /** Runs a sync of one change against 1 + 2 ranges; returns whether it asked for the windows. */
    const windowed = (windowCost: number) => {
      const vm = vmWith([], [{ gfn: 0, npages: 1, encrypted: false }]);
      const windows = vm.touched.windows.bind(vm.touched);
      let asked = false;
      vm.touched.windows = () => {
        asked = true;
        return windows();
      };
      expect(advanceSync(vm, windowCost).delta).toEqual([{ gfn: 0, npages: 1, encrypted: false }]);
      return asked;
    };
    expect(windowed(2)).toBe(true); // 1 window x 2 < 3 ranges
    expect(windowed(3)).toBe(false); // 1 x 3 >= 3: the whole walk is no dearer
  });
});
