/**
 * The native bitmap-to-runs kernel against the limit of its work: reading
 * every word of the same bitmap once (the native popcount scan,
 * bitmapCountRange) plus writing the runs once, and against a plain
 * TypeScript loop for reference.
 */
import { nativeAddon } from '../../src/common/native.js';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { type BenchGroup, medianMs, seededRandom } from '../harness.js';

/**
 * A fair TypeScript baseline: skips zero words, then walks the bits of the
 * others; emits flat [gfn, npages, ...] like the native kernel.
 */
function tsRuns(words: Uint32Array, nbits: number): number[] {
  const runs: number[] = [];
  let start = -1;
  for (let w = 0; w < words.length; w++) {
    const word = words[w];
    if (start < 0 && word === 0) continue;
    if (start >= 0 && word === 0xffffffff) continue;
    for (let b = 0; b < 32; b++) {
      const gfn = w * 32 + b;
      if (gfn >= nbits) break;
      const set = ((word >>> b) & 1) === 1;
      if (set && start < 0) start = gfn;
      else if (!set && start >= 0) {
        runs.push(start, gfn - start);
        start = -1;
      }
    }
  }
  if (start >= 0) runs.push(start, nbits - start);
  return runs;
}

export const bitmapGroup: BenchGroup = {
  name: 'bitmap',
  description: 'native bitmap kernels vs plain TypeScript loops (1 TiB guest, 2^28 pages)',
  run(report) {
    const npages = 2 ** 28;
    const gb = npages / 8 / 1e9;
    for (const density of [0.001, 0.1]) {
      const bm = new PageBitmap(npages);
      const rand = seededRandom(7);
      const dirty = Math.floor(npages * density);
      // Dirty pages in small clusters, as guest writes produce them.
      for (let i = 0; i < dirty / 4; i++) bm.setRange(Math.floor(rand() * (npages - 8)), 4);
      let nativeRuns = 0;
      let tsRunCount = 0;
      const nativeMs = medianMs(() => {
        nativeRuns = nativeAddon().bitmapToRuns(bm.words, npages).length / 2;
      }, 5);
      const tsMs = medianMs(() => {
        tsRunCount = tsRuns(bm.words, npages).length / 2;
      }, 3);
      if (nativeRuns !== tsRunCount) throw new Error(`run counts differ: ${nativeRuns} vs ${tsRunCount}`);
      // The least work of bitmap-to-runs: read every word once and write every
      // run's (gfn, npages) pair once.
      const scanMs = medianMs(() => nativeAddon().bitmapCountRange(bm.words, 0, npages), 5);
      const out = new Float64Array(2 * nativeRuns);
      const writeMs = medianMs(() => out.fill(1), 5);
      report({
        name: `bitmap-to-runs, ${density * 100}% dirty (${nativeRuns} runs)`,
        value: gb / (nativeMs / 1000),
        unit: 'GB/s',
        limit: gb / ((scanMs + writeMs) / 1000),
        limitName: 'native scan of every word + writing the runs',
      });
      report({
        name: `bitmap-to-runs, ${density * 100}% dirty, vs TypeScript`,
        value: gb / (nativeMs / 1000),
        unit: 'GB/s',
        baseline: gb / (tsMs / 1000),
        baselineName: 'TS word loop',
      });
    }
  },
};
