import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BoundaryList } from '../../src/host/boundary-list.js';

type Op =
  | { kind: 'set'; key: number; value: number }
  | { kind: 'delete'; key: number }
  | { kind: 'deleteRange'; lo: number; hi: number }
  | { kind: 'clone' };

const key = fc.integer({ min: 0, max: 3000 });
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ kind: fc.constant('set' as const), key, value: fc.integer({ min: 0, max: 1 }) }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), key }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(key, fc.integer({ min: 0, max: 1500 }))
      .map(([lo, n]) => ({ kind: 'deleteRange' as const, lo, hi: lo + n })),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'clone' as const }) },
);

function sortedModel(m: Map<number, number>): [number, number][] {
  return [...m.entries()].sort((a, b) => a[0] - b[0]);
}

describe('BoundaryList against a Map model', () => {
  it('set / delete / deleteRange / floor / forRange, across block splits and copy-on-write clones', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 1500 }), (ops) => {
        const list = new BoundaryList(0, 1);
        const model = new Map<number, number>([[0, 1]]);
        const clones: [BoundaryList, [number, number][]][] = [];
        for (const o of ops) {
          if (o.kind === 'set') {
            list.set(o.key, o.value);
            model.set(o.key, o.value);
          } else if (o.kind === 'delete') {
            expect(list.delete(o.key)).toBe(model.delete(o.key));
          } else if (o.kind === 'deleteRange') {
            let n = 0;
            for (const k of [...model.keys()]) {
              if (k >= o.lo && k <= o.hi) {
                model.delete(k);
                n++;
              }
            }
            expect(list.deleteRange(o.lo, o.hi)).toBe(n);
          } else {
            clones.push([list.clone(), sortedModel(model)]);
          }
        }
        const expected = sortedModel(model);
        expect([...list.entries()]).toEqual(expected);
        expect(list.size).toBe(expected.length);
        // Clones still hold what they held when taken.
        for (const [c, snapshot] of clones) expect([...c.entries()]).toEqual(snapshot);
        for (const probe of [0, 1, 7, 500, 1499, 2999, 4000]) {
          const f = list.floor(probe);
          const want = expected.filter(([k]) => k <= probe).pop();
          expect(f === undefined ? undefined : [list.keyAt(f), list.valueAt(f)]).toEqual(want);
          expect(list.get(probe)).toBe(model.get(probe));
        }
        expect([...list.entries(1500)]).toEqual(expected.filter(([k]) => k >= 1500));
        const seen: number[] = [];
        list.forRange(100, 2000, (k) => seen.push(k));
        expect(seen).toEqual(expected.map(([k]) => k).filter((k) => k >= 100 && k < 2000));
      }),
      { numRuns: 60 },
    );
  });

  it('fromSorted builds the list set() builds, over many blocks, and stays correct under later changes', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: 3000 }), { maxLength: 2500 }),
        fc.array(op, { maxLength: 400 }),
        (rest, ops) => {
          const keys = Float64Array.from([0, ...rest.sort((a, b) => a - b)]);
          const vals = Uint8Array.from(keys, (_, i) => i % 2);
          const built = BoundaryList.fromSorted(keys, vals, keys.length);
          const snapshots: [BoundaryList, [number, number][]][] = [];
          const model = new BoundaryList(0, 0);
          keys.forEach((k, i) => {
            model.set(k, vals[i]);
          });
          expect([...built.entries()]).toEqual([...model.entries()]);
          expect(built.size).toBe(keys.length);
          for (const o of ops) {
            if (o.kind === 'set') {
              built.set(o.key, o.value);
              model.set(o.key, o.value);
            } else if (o.kind === 'delete') {
              expect(built.delete(o.key)).toBe(model.delete(o.key));
            } else if (o.kind === 'deleteRange') {
              expect(built.deleteRange(o.lo, o.hi)).toBe(model.deleteRange(o.lo, o.hi));
            } else {
              snapshots.push([built.clone(), [...model.entries()]]); // copy-on-write of the built blocks
            }
          }
          expect([...built.entries()]).toEqual([...model.entries()]);
          expect(built.size).toBe(model.size);
          for (const [c, entries] of snapshots) expect([...c.entries()]).toEqual(entries);
          for (const probe of [0, 1, 383, 384, 385, 1500, 3000])
            expect(built.get(probe)).toBe(model.get(probe));
        },
      ),
      { numRuns: 40 },
    );
  });

  it('fromSorted refuses a count outside [1, keys given]', () => {
    const keys = Float64Array.from([0, 5]);
    const vals = Uint8Array.from([1, 0]);
    expect(() => BoundaryList.fromSorted(keys, vals, 0)).toThrow('fromSorted: n must be in [1, 2], got 0');
    expect(() => BoundaryList.fromSorted(keys, vals, 3)).toThrow(RangeError);
    expect([...BoundaryList.fromSorted(keys, vals, 1).entries()]).toEqual([[0, 1]]);
  });

  it('sameEntries: lists of the same entries built differently are the same; one changed entry is not', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 2000 }),
        fc.nat(),
        (rest, pick) => {
          const keys = Float64Array.from([0, ...rest.sort((a, b) => a - b)]);
          const vals = Uint8Array.from(keys, (_, i) => i % 2);
          const bulk = BoundaryList.fromSorted(keys, vals, keys.length);
          const grown = new BoundaryList(0, 0);
          for (let i = keys.length - 1; i >= 0; i--) grown.set(keys[i], vals[i]); // other block splits
          expect(bulk.sameEntries(grown)).toBe(true);
          expect(grown.sameEntries(bulk)).toBe(true);
          const i = pick % keys.length;
          const changed = grown.clone();
          changed.set(keys[i], 1 - vals[i]);
          expect(bulk.sameEntries(changed)).toBe(false);
          if (i > 0) {
            changed.set(keys[i], vals[i]);
            changed.delete(keys[i]);
            changed.set(keys[i] + 0.5, vals[i]); // same count, one key moved
            expect(bulk.sameEntries(changed)).toBe(false);
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});
