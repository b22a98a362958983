/** PageStateMap apply and diff against a naive one-byte-per-page array. */
import { PageStateMap } from '../../src/host/page-state-map.js';
import { type BenchGroup, opsPerSecond, seededRandom } from '../harness.js';

const GUEST_PAGES = 16 * 2 ** 20; // 64 GiB

interface Change {
  gfn: number;
  npages: number;
  encrypted: boolean;
}

/** The realistic mix: mostly single pages (boot storm), some 2 MiB and 64 MiB ranges. */
function changes(count: number, seed: number): Change[] {
  const rand = seededRandom(seed);
  const out: Change[] = [];
  for (let i = 0; i < count; i++) {
    const r = rand();
    const npages = r < 0.9 ? 1 : r < 0.99 ? 512 : 16384;
    const gfn = Math.floor(rand() * ((GUEST_PAGES - npages) / npages)) * npages;
    out.push({ gfn, npages, encrypted: rand() < 0.5 });
  }
  return out;
}

export const pageStateGroup: BenchGroup = {
  name: 'page-state',
  description: 'PageStateMap on a 64 GiB guest vs a one-byte-per-page array',
  run(report) {
    const batch = changes(20_000, 1);
    let map = new PageStateMap(GUEST_PAGES);
    const mapOps =
      opsPerSecond(() => {
        map = new PageStateMap(GUEST_PAGES);
        for (const c of batch) map.apply(c.gfn, c.npages, c.encrypted);
      }) * batch.length;
    const naive = new Uint8Array(GUEST_PAGES).fill(1);
    const naiveOps =
      opsPerSecond(() => {
        for (const c of batch) naive.fill(c.encrypted ? 1 : 0, c.gfn, c.gfn + c.npages);
      }) * batch.length;
    report({
      name: 'apply (mixed 1/512/16384-page changes)',
      value: mapOps,
      unit: 'ops/s',
      baseline: naiveOps,
      baselineName: 'byte array fill',
    });

    // Diff two states 1k changes apart, as a sync does.
    const a = map.clone();
    const b = map.clone();
    for (const c of changes(1000, 2)) b.apply(c.gfn, c.npages, c.encrypted);
    const naiveA = new Uint8Array(GUEST_PAGES);
    const naiveB = new Uint8Array(GUEST_PAGES);
    for (const r of a.ranges()) naiveA.fill(r.encrypted ? 1 : 0, r.gfn, r.gfn + r.npages);
    for (const r of b.ranges()) naiveB.fill(r.encrypted ? 1 : 0, r.gfn, r.gfn + r.npages);
    const diffOps = opsPerSecond(() => a.diff(b));
    const naiveDiffOps = opsPerSecond(() => {
      let runs = 0;
      let inRun = false;
      for (let i = 0; i < GUEST_PAGES; i++) {
        const d = naiveA[i] !== naiveB[i];
        if (d && !inRun) runs++;
        inRun = d;
      }
      if (runs < 0) throw new Error('unreachable');
    });
    report({
      name: `diff (${a.rangeCount} vs ${b.rangeCount} ranges, 1k changes)`,
      value: diffOps,
      unit: 'ops/s',
      baseline: naiveDiffOps,
      baselineName: 'byte array scan',
    });
    const small = new PageStateMap(GUEST_PAGES);
    const smallB = small.clone();
    for (const c of changes(1000, 3)) smallB.apply(c.gfn, c.npages, c.encrypted);
    report({
      name: `diff (1 vs ${smallB.rangeCount} ranges), ms per diff`,
      value: 1000 / opsPerSecond(() => small.diff(smallB)),
      unit: 'ms',
      baseline: 1000 / naiveDiffOps,
      baselineName: 'byte array scan',
    });
  },
};
