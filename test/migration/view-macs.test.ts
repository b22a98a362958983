/**
 * ViewMacTable's bookkeeping of which pages have a MAC and under which
 * c-bit: noteMoved records a batch run by run, and must leave exactly what
 * recording it page by page would (any gfn order, gaps, repeats).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { ViewMacTable } from '../../src/migration/view-macs.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

const NPAGES = 200;

function bitsOf(bm: PageBitmap): boolean[] {
  return Array.from({ length: NPAGES }, (_, g) => bm.test(g));
}

describe('ViewMacTable.noteMoved', () => {
  it('leaves the same valid/under pages as recording each page on its own', () => {
    const memory = GuestMemory.create(NPAGES);
    const moves = fc.array(
      fc.record({
        gfns: fc.array(fc.integer({ min: 0, max: NPAGES - 1 }), { minLength: 1, maxLength: 40 }),
        runFrom: fc.integer({ min: 0, max: NPAGES - 1 }),
        runLength: fc.integer({ min: 0, max: 30 }),
        encrypted: fc.boolean(),
      }),
      { maxLength: 12 },
    );
    fc.assert(
      fc.property(moves, (ms) => {
        const table = new ViewMacTable(memory, new Uint8Array(16));
        const valid = new Array<boolean>(NPAGES).fill(false);
        const under = new Array<boolean>(NPAGES).fill(false);
        for (const m of ms) {
          // Random gfns plus a consecutive run, as batches mostly are.
          const run = Array.from({ length: m.runLength }, (_, i) => m.runFrom + i).filter((g) => g < NPAGES);
          const gfns = [...m.gfns, ...run];
          table.noteMoved(Float64Array.from(gfns), m.encrypted);
          for (const g of gfns) {
            valid[g] = true;
            under[g] = m.encrypted;
          }
        }
        // stale(all shared) = not valid or taken encrypted; stale(all encrypted) = not valid or taken shared.
        const none = new PageBitmap(NPAGES);
        const all = new PageBitmap(NPAGES);
        all.setRange(0, NPAGES);
        expect(bitsOf(table.stale(none))).toEqual(valid.map((v, g) => !v || under[g]));
        expect(bitsOf(table.stale(all))).toEqual(valid.map((v, g) => !v || !under[g]));
      }),
      { numRuns: 300 },
    );
  });
});
