import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../../src/common/errors.js';
import type { StateRange } from '../../src/common/ranges.js';
import { PageStateMap } from '../../src/host/page-state-map.js';

/** The naive model: one boolean per page. */
function naiveRanges(pages: boolean[]): StateRange[] {
  const out: StateRange[] = [];
  pages.forEach((encrypted, gfn) => {
    const last = out[out.length - 1];
    if (last && last.encrypted === encrypted) last.npages++;
    else out.push({ gfn, npages: 1, encrypted });
  });
  return out;
}

/**
 * Changes biased towards the interesting shapes: gfn 0, the last page,
 * single pages, and ranges adjacent to, overlapping or nested in others.
 */
function changeArb(npages: number) {
  const gfn = fc.oneof(
    fc.constant(0),
    fc.constant(npages - 1),
    fc.integer({ min: 0, max: npages - 1 }),
    fc.integer({ min: 0, max: Math.min(npages - 1, 8) }),
  );
  return gfn.chain((g) =>
    fc.record({
      gfn: fc.constant(g),
      npages: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: npages - g })),
      encrypted: fc.boolean(),
    }),
  );
}

const scenario = fc.integer({ min: 1, max: 300 }).chain((npages) =>
  fc.record({
    npages: fc.constant(npages),
    initial: fc.boolean(),
    changes: fc.array(changeArb(npages), { maxLength: 60 }),
  }),
);

function build(npages: number, initial: boolean, changes: StateRange[]) {
  const map = new PageStateMap(npages, initial);
  const model = new Array<boolean>(npages).fill(initial);
  for (const c of changes) {
    let flips = 0;
    for (let i = c.gfn; i < c.gfn + c.npages; i++) {
      if (model[i] !== c.encrypted) flips++;
      model[i] = c.encrypted;
    }
    expect(map.apply(c.gfn, c.npages, c.encrypted)).toBe(flips);
  }
  return { map, model };
}

describe('PageStateMap against a per-page model', () => {
  it('matches the model after any sequence of changes', () => {
    fc.assert(
      fc.property(scenario, ({ npages, initial, changes }) => {
        const { map, model } = build(npages, initial, changes);
        expect([...map.ranges()]).toEqual(naiveRanges(model));
        expect(map.rangeCount).toBe(naiveRanges(model).length);
        expect(map.encryptedCount).toBe(model.filter(Boolean).length);
        expect(map.sharedCount).toBe(model.filter((e) => !e).length);
        for (let gfn = 0; gfn < npages; gfn++) expect(map.isEncrypted(gfn)).toBe(model[gfn]);
      }),
      { numRuns: 300 },
    );
  });

  it('ranges(from) starts at the range holding from', () => {
    fc.assert(
      fc.property(scenario, fc.nat(), ({ npages, initial, changes }, from) => {
        const { map, model } = build(npages, initial, changes);
        const start = from % npages;
        const got = [...map.ranges(start)];
        const all = naiveRanges(model);
        expect(got).toEqual(all.filter((r) => r.gfn + r.npages > start));
      }),
    );
  });

  it('applying diff(a, b) to a yields b, and the diff is coalesced and minimal', () => {
    fc.assert(
      fc.property(
        scenario.chain((s) =>
          fc.tuple(fc.constant(s), fc.array(changeArb(s.npages), { maxLength: 40 }), fc.boolean()),
        ),
        ([{ npages, initial, changes }, more, otherInitial]) => {
          const a = build(npages, initial, changes).map;
          const b = build(npages, otherInitial, more).map;
          const d = a.diff(b);
          for (const r of d) {
            for (let g = r.gfn; g < r.gfn + r.npages; g++) {
              expect(a.isEncrypted(g)).not.toBe(r.encrypted);
              expect(b.isEncrypted(g)).toBe(r.encrypted);
            }
          }
          for (let i = 1; i < d.length; i++) {
            const prev = d[i - 1];
            expect(prev.gfn + prev.npages <= d[i].gfn).toBe(true);
            if (prev.gfn + prev.npages === d[i].gfn) expect(prev.encrypted).not.toBe(d[i].encrypted);
          }
          const patched = a.clone();
          for (const r of d) patched.apply(r.gfn, r.npages, r.encrypted);
          expect(patched.equals(b)).toBe(true);
          expect(patched.diff(b)).toEqual([]);
          // The clone is independent of the original.
          expect(a.diff(b)).toEqual(d);
        },
      ),
    );
  });

  it('serialize / deserialize round-trips', () => {
    fc.assert(
      fc.property(scenario, ({ npages, initial, changes }) => {
        const { map } = build(npages, initial, changes);
        const back = PageStateMap.deserialize(map.serialize());
        expect(back.equals(map)).toBe(true);
        expect(back.encryptedCount).toBe(map.encryptedCount);
      }),
    );
  });

  it('a map of thousands of ranges round-trips, takes further changes like the original, and gives its encrypted frames as a bitmap', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 31 }), fc.boolean(), (seed, initial) => {
        const npages = 40_000;
        const map = new PageStateMap(npages, initial);
        let x = seed;
        const next = () => {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          return x;
        };
        for (let i = 0; i < 3000; i++) {
          const g = next() % npages;
          map.apply(g, Math.min(1 + (next() % 9), npages - g), (next() & 1) === 1);
        }
        const back = PageStateMap.deserialize(map.serialize());
        expect(back.equals(map)).toBe(true);
        expect(back.rangeCount).toBe(map.rangeCount);
        for (let i = 0; i < 500; i++) {
          const g = next() % npages;
          const n = Math.min(1 + (next() % 50), npages - g);
          const e = (next() & 1) === 1;
          expect(back.apply(g, n, e)).toBe(map.apply(g, n, e));
        }
        expect(back.equals(map)).toBe(true);
        const bits = back.encryptedBitmap();
        expect(bits.count()).toBe(back.encryptedCount);
        for (let g = 0; g < npages; g += 7) expect(bits.test(g)).toBe(back.isEncrypted(g));
      }),
      { numRuns: 15 },
    );
  });

  it('diff of two equal maps built differently is empty; with the same range count but a moved boundary it is that boundary', () => {
    const a = new PageStateMap(10_000);
    for (let g = 0; g < 10_000; g += 10) a.apply(g, 3, false);
    const b = PageStateMap.deserialize(a.serialize()); // other block splits
    expect(a.diff(b)).toEqual([]);
    expect(b.equals(a)).toBe(true);
    // Move one boundary by one page: the same number of ranges, one page differs.
    b.apply(503, 1, false);
    b.apply(500, 1, true);
    expect(b.rangeCount).toBe(a.rangeCount);
    expect(b.encryptedCount).toBe(a.encryptedCount);
    expect(a.equals(b)).toBe(false);
    expect(a.diff(b)).toEqual([
      { gfn: 500, npages: 1, encrypted: true },
      { gfn: 503, npages: 1, encrypted: false },
    ]);
  });

  it('handles a 1 TiB guest: changes at gfn 0 and the last page cost ranges, not pages', () => {
    const npages = 2 ** 28;
    const map = new PageStateMap(npages);
    expect(map.apply(npages - 1, 1, false)).toBe(1);
    expect(map.apply(0, 512, false)).toBe(512);
    expect(map.apply(2 ** 27, 2 ** 18, false)).toBe(2 ** 18);
    expect(map.sharedCount).toBe(1 + 512 + 2 ** 18);
    expect([...map.ranges()].length).toBe(5);
    expect(PageStateMap.deserialize(map.serialize()).equals(map)).toBe(true);
  });
});

describe('PageStateMap rejects bad input and corrupted buffers', () => {
  it('names the field of an out-of-range change and changes nothing', () => {
    const map = new PageStateMap(100);
    expect(() => map.apply(100, 1, false)).toThrow(InvalidArgumentError);
    expect(() => map.apply(100, 1, false)).toThrow(/gfn 100 is outside/);
    expect(() => map.apply(99, 2, false)).toThrow(/npages 2 at gfn 99/);
    expect(() => map.apply(0, 0, false)).toThrow(/npages 0/);
    expect(() => new PageStateMap(0)).toThrow(/npages 0/);
    expect(map.rangeCount).toBe(1);
    expect(map.encryptedCount).toBe(100);
  });

  const sample = () => {
    const m = new PageStateMap(1000);
    m.apply(10, 5, false);
    m.apply(500, 100, false);
    return Buffer.from(m.serialize());
  };

  it('rejects a truncated buffer at the offset where data ran out', () => {
    const buf = sample();
    for (const len of [0, 10, 35, buf.length - 1]) {
      const err = (() => {
        try {
          PageStateMap.deserialize(buf.subarray(0, len));
        } catch (e) {
          return e as FormatError;
        }
      })();
      expect(err).toBeInstanceOf(FormatError);
      expect(err!.message).toMatch(/expected .* at offset \d+, got/);
    }
  });

  it('rejects each corrupted field, naming what was expected and where', () => {
    const cases: [number, RegExp][] = [
      [0, /magic "SVPS" at offset 0/],
      [4, /version 1 at offset 4/],
      [6, /reserved 0 at offset 6/],
      [24, /state 0 or 1 at offset 24|CRC-32/],
      [40, /CRC-32/],
    ];
    for (const [offset, pattern] of cases) {
      const buf = sample();
      buf[offset] ^= 0x5a;
      expect(() => PageStateMap.deserialize(buf)).toThrow(pattern);
    }
  });

  it('rejects boundaries out of order even with a valid CRC', async () => {
    const { zlib } = await import('../../src/common/node-compat.js');
    const buf = sample();
    buf.writeBigUInt64LE(9n, 40); // second boundary (15) replaced by 9 < 10
    buf.writeUInt32LE(zlib.crc32(buf.subarray(0, buf.length - 4)), buf.length - 4);
    expect(() => PageStateMap.deserialize(buf)).toThrow(/range start in \(10, 1000\) at offset 40, got 9/);
  });
});

describe('PageStateMap.diff within windows', () => {
  it('equals the full diff restricted to the windows', () => {
    fc.assert(
      fc.property(
        scenario.chain((s) =>
          fc.tuple(
            fc.constant(s),
            fc.array(changeArb(s.npages), { maxLength: 20 }),
            fc.array(changeArb(s.npages), { maxLength: 6 }),
          ),
        ),
        ([{ npages, initial, changes }, more, windowSeeds]) => {
          const a = build(npages, initial, changes).map;
          const b = a.clone();
          for (const c of more) b.apply(c.gfn, c.npages, c.encrypted);
          // Disjoint sorted windows from random ranges.
          const marks = new PageStateMap(npages, false);
          for (const w of windowSeeds) marks.apply(w.gfn, w.npages, true);
          const windows = [...marks.ranges()].filter((r) => r.encrypted);
          const inWindow = (g: number) => windows.some((w) => g >= w.gfn && g < w.gfn + w.npages);
          const expected: boolean[] = [];
          for (let g = 0; g < npages; g++)
            expected.push(inWindow(g) && a.isEncrypted(g) !== b.isEncrypted(g));
          const got = new Array<boolean>(npages).fill(false);
          for (const r of a.diff(b, windows)) {
            for (let g = r.gfn; g < r.gfn + r.npages; g++) {
              got[g] = true;
              expect(b.isEncrypted(g)).toBe(r.encrypted);
            }
          }
          expect(got).toEqual(expected);
        },
      ),
    );
  });
});
