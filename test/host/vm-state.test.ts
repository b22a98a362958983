import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { PageStateMap } from '../../src/host/page-state-map.js';
import { TouchedSet } from '../../src/host/vm-state.js';

describe('TouchedSet', () => {
  it('gives the union of the touched frames as disjoint ascending windows (against a naive model)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 199 }), fc.integer({ min: 1, max: 20 })), {
          maxLength: 200,
        }),
        (pairs) => {
          const set = new TouchedSet(220);
          const model = new Uint8Array(220);
          for (const [gfn, n] of pairs) {
            set.add(gfn, n);
            model.fill(1, gfn, gfn + n);
          }
          const fromSet = new Uint8Array(220);
          let last = -1;
          for (const w of set.windows()!) {
            expect(w.gfn).toBeGreaterThan(last);
            fromSet.fill(1, w.gfn, w.gfn + w.npages);
            last = w.gfn + w.npages;
          }
          expect(fromSet).toEqual(model);
        },
      ),
    );
  });

  it('its memory is bounded by the distinct ranges, not the number of changes', () => {
    const set = new TouchedSet(1 << 20);
    for (let i = 0; i < 1_000_000; i++) set.add((i * 7919) % 1000, 1);
    const pairs = (set as unknown as { pairs: number[] }).pairs;
    const folded = (set as unknown as { folded: PageStateMap }).folded;
    expect(pairs.length).toBeLessThanOrEqual(2 * 32_768);
    expect(folded.rangeCount).toBeLessThanOrEqual(3);
    expect(set.windows()).toEqual([{ gfn: 0, npages: 1000 }]);
  });

  it('"all" (after recovery) means every frame', () => {
    const set = new TouchedSet(10, true);
    set.add(1, 1);
    expect(set.windows()).toBeUndefined();
  });
});
