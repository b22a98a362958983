import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  refClearRange,
  refCombine,
  refCountRange,
  refSetRange,
  refTest,
  refToRuns,
} from '../../src/common/bitmap-reference.js';
import { InvalidArgumentError } from '../../src/common/errors.js';
import { bitmapWordCount, MAX_BITMAP_PAGES, PageBitmap } from '../../src/common/page-bitmap.js';

/** A random bitmap of npages bits (sizes often not a multiple of 64) and a reference copy. */
const bitmapArb = fc
  .integer({ min: 1, max: 700 })
  .chain((npages) =>
    fc.tuple(
      fc.constant(npages),
      fc.uint32Array({ minLength: bitmapWordCount(npages), maxLength: bitmapWordCount(npages) }),
    ),
  )
  .map(([npages, words]) => {
    const bm = new PageBitmap(npages);
    bm.words.set(words);
    // Bits past npages are never set by the API; keep the random input honest too.
    for (let i = npages; i < bm.words.length * 32; i++) bm.words[i >>> 5] &= ~(1 << (i & 31));
    return bm;
  });

const bitmapWithRange = bitmapArb.chain((bm) =>
  fc
    .integer({ min: 0, max: bm.npages })
    .chain((gfn) =>
      fc.tuple(fc.constant(bm), fc.constant(gfn), fc.integer({ min: 0, max: bm.npages - gfn })),
    ),
);

describe('PageBitmap native kernels match the TypeScript reference', () => {
  it('setRange / clearRange, including ranges that cross word boundaries', () => {
    fc.assert(
      fc.property(bitmapWithRange, fc.boolean(), ([bm, gfn, npages], set) => {
        const ref = bm.words.slice();
        const atomic = bm.clone();
        if (set) {
          bm.setRange(gfn, npages);
          atomic.setRangeAtomic(gfn, npages);
          refSetRange(ref, gfn, npages);
        } else {
          bm.clearRange(gfn, npages);
          atomic.clearRangeAtomic(gfn, npages);
          refClearRange(ref, gfn, npages);
        }
        expect(Array.from(bm.words)).toEqual(Array.from(ref));
        expect(Array.from(atomic.words)).toEqual(Array.from(ref));
      }),
    );
  });

  it('count over any range', () => {
    fc.assert(
      fc.property(bitmapWithRange, ([bm, gfn, npages]) => {
        expect(bm.count(gfn, npages)).toBe(refCountRange(bm.words, gfn, npages));
      }),
    );
  });

  it('runs are the maximal runs of set bits', () => {
    fc.assert(
      fc.property(bitmapArb, (bm) => {
        expect(bm.runs()).toEqual(refToRuns(bm.words, bm.npages));
      }),
    );
  });

  it("setRuns of a bitmap's runs rebuilds it, over bits already set; a bad run list changes nothing", () => {
    fc.assert(
      fc.property(bitmapArb, bitmapArb, (bm, base) => {
        const flat = Float64Array.from(bm.runs().flatMap((r) => [r.gfn, r.npages]));
        const rebuilt = new PageBitmap(bm.npages);
        rebuilt.setRuns(flat);
        expect(Array.from(rebuilt.words)).toEqual(Array.from(bm.words));
        if (base.npages === bm.npages) {
          const over = base.clone();
          over.setRuns(flat); // or-ed in, as setRange would
          expect(Array.from(over.words)).toEqual(Array.from(base.clone().or(bm).words));
        }
      }),
    );
    const bm = new PageBitmap(100);
    bm.setRange(3, 4);
    const before = Array.from(bm.words);
    for (const [bad, message] of [
      [[0, 5, 7], /runs must hold \(gfn, npages\) pairs; got 3 numbers/],
      [[0, 5, 98, 3], /run \(gfn 98, npages 3\) exceeds the bitmap's 100 pages/],
      [[0, 5, 200, 1], /runs \(gfn\)/],
      [[Number.NaN, 1], /runs \(gfn\)/],
      [[1, 2.5], /runs \(npages\)/],
    ] as const) {
      expect(() => bm.setRuns(Float64Array.from(bad))).toThrow(message);
      expect(Array.from(bm.words)).toEqual(before); // checked before any bit is set
    }
  });

  it('runs handle full, empty and last-bit bitmaps', () => {
    const bm = new PageBitmap(130);
    expect(bm.runs()).toEqual([]);
    bm.setRange(0, 130);
    expect(bm.runs()).toEqual([{ gfn: 0, npages: 130 }]);
    bm.clearRange(0, 129);
    expect(bm.runs()).toEqual([{ gfn: 129, npages: 1 }]);
    expect(bm.test(129)).toBe(true);
    expect(bm.test(128)).toBe(false);
  });

  it('or / andNot / xor', () => {
    fc.assert(
      fc.property(
        bitmapArb.chain((a) =>
          fc.tuple(
            fc.constant(a),
            fc.uint32Array({ minLength: a.words.length, maxLength: a.words.length }),
            fc.constantFrom('or' as const, 'andNot' as const, 'xor' as const),
          ),
        ),
        ([a, bWords, op]) => {
          const b = new PageBitmap(a.npages);
          b.words.set(bWords);
          const expected = new Uint32Array(a.words.length);
          refCombine(expected, a.words, b.words, op);
          a[op](b);
          expect(Array.from(a.words)).toEqual(Array.from(expected));
        },
      ),
    );
  });

  it('works at 2^28 pages (a 1 TiB guest), at the last page', () => {
    const bm = new PageBitmap(MAX_BITMAP_PAGES);
    bm.setRange(MAX_BITMAP_PAGES - 3, 3);
    bm.setRange(0, 1);
    expect(bm.count()).toBe(4);
    expect(bm.runs()).toEqual([
      { gfn: 0, npages: 1 },
      { gfn: MAX_BITMAP_PAGES - 3, npages: 3 },
    ]);
    expect(refTest(bm.words, MAX_BITMAP_PAGES - 1)).toBe(true);
  });
});

describe('PageBitmap rejects bad input', () => {
  it('names the field for out-of-range ranges and sizes', () => {
    const bm = new PageBitmap(100);
    expect(() => bm.setRange(90, 11)).toThrow(InvalidArgumentError);
    expect(() => bm.setRange(90, 11)).toThrow(/gfn 90, npages 11.*100 pages/);
    expect(() => bm.count(-1, 1)).toThrow(/outside the bitmap/);
    expect(() => new PageBitmap(MAX_BITMAP_PAGES + 1)).toThrow(/npages .* 1 TiB/);
    expect(() => bm.or(new PageBitmap(101))).toThrow(/differ in size/);
    expect(bm.count()).toBe(0);
  });
});

/**
 * Writer threads set random bits with Atomics.or and count every write per
 * page, while the main thread harvests repeatedly. Every page written must
 * show up in some harvest, and nothing unwritten may.
 */
const writerSource = `
const { workerData, parentPort } = require('node:worker_threads');
const { buffer, npages, writes, seed, counts } = workerData;
const words = new Int32Array(buffer);
const perPage = new Int32Array(counts);
let s = seed >>> 0;
for (let i = 0; i < writes; i++) {
  s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
  const gfn = s % npages;
  Atomics.add(perPage, gfn, 1);
  Atomics.or(words, gfn >>> 5, 1 << (gfn & 31));
}
parentPort.postMessage('done');
`;

describe('harvest with concurrent writers', () => {
  it('loses no bit written by 3 threads while harvesting', async () => {
    const npages = 100_003;
    const shared = new PageBitmap(npages, { shared: true });
    const counts = new SharedArrayBuffer(npages * 4);
    const harvested = new PageBitmap(npages);
    const writers = [1, 2, 3].map(
      (seed) =>
        new Worker(writerSource, {
          eval: true,
          workerData: { buffer: shared.buffer, npages, writes: 400_000, seed, counts },
        }),
    );
    let running = writers.length;
    const done = Promise.all(
      writers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            w.once('message', () => {
              running--;
              resolve();
            });
            w.once('error', reject);
          }),
      ),
    );
    let harvests = 0;
    let bitsMoved = 0;
    while (running > 0) {
      const round = new PageBitmap(npages);
      bitsMoved += shared.harvestInto(round);
      harvested.or(round);
      harvests++;
      await new Promise((r) => setImmediate(r));
    }
    await done;
    bitsMoved += shared.harvestInto(harvested);
    expect(shared.count()).toBe(0);
    const perPage = new Int32Array(counts);
    let written = 0;
    for (let gfn = 0; gfn < npages; gfn++) {
      if (perPage[gfn] > 0) written++;
      expect(harvested.test(gfn)).toBe(perPage[gfn] > 0);
    }
    expect(harvested.count()).toBe(written);
    // Pages re-dirtied after a harvest are counted again, so moves >= pages.
    expect(bitsMoved).toBeGreaterThanOrEqual(written);
    expect(harvests).toBeGreaterThan(0);
  });
});
