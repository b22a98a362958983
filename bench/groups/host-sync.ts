/**
 * sync() time with 10, 1k and 100k changes since the previous sync on 4 GiB,
 * 64 GiB and 1 TiB guests, against the same delta taken from full state
 * bitmaps (XOR of two state bitmaps of the guest's size that differ by the
 * same changes, then their runs), measured in the same run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import type { StateRange } from '../../src/common/ranges.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type BenchGroup, medianMs } from '../harness.js';
import { realisticChanges } from './host-ingest.js';

const SIZES: [string, number][] = [
  ['4 GiB', 2 ** 20],
  ['64 GiB', 2 ** 24],
  ['1 TiB', 2 ** 28],
];

/** Applies changes to a state bitmap (a set bit: encrypted). */
function applyTo(state: PageBitmap, changes: readonly StateRange[]): PageBitmap {
  for (const c of changes) {
    if (c.encrypted) state.setRange(c.gfn, c.npages);
    else state.clearRange(c.gfn, c.npages);
  }
  return state;
}

/**
 * Median ms to diff two state bitmaps of `npages`, the one `earlier` (the
 * changes the store held at its last sync) and the other that plus
 * `changes`, as the store's states differ: XOR, then the runs.
 */
function bitmapDiffMs(
  npages: number,
  earlier: readonly StateRange[],
  changes: readonly StateRange[],
): number {
  const before = applyTo(new PageBitmap(npages), earlier);
  const after = applyTo(before.clone(), changes);
  return medianMs(() => {
    after.clone().xor(before).runs();
  }, 5);
}

export const hostSyncGroup: BenchGroup = {
  name: 'host-sync',
  description: 'sync() latency vs a full-bitmap scan of the same guest',
  run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      for (const [label, npages] of SIZES) {
        for (const count of [10, 1000, 100_000]) {
          const store = CbitStore.open(join(dir, `${label}-${count}.db`.replace(/ /g, '')), {
            synchronous: 'NORMAL',
          });
          store.registerVm(1, npages);
          // A guest that already has a fragmented state (a boot storm), synced once.
          const boot = realisticChanges(20_000, 5, npages);
          store.applyBatch(1, boot);
          store.sync(1);
          const rounds = count >= 100_000 ? 3 : 7;
          const batches = Array.from({ length: rounds + 1 }, (_, i) =>
            realisticChanges(count, 100 + i, npages),
          );
          const scanMs = bitmapDiffMs(npages, [...boot, ...batches[0]], batches[1]);
          let round = 0;
          const times: number[] = [];
          for (const batch of batches) {
            store.applyBatch(1, batch);
            const start = process.hrtime.bigint();
            store.sync(1);
            if (round++ > 0) times.push(Number(process.hrtime.bigint() - start) / 1e6);
          }
          times.sort((a, b) => a - b);
          report({
            name: `sync, ${count} changes since last, ${label} guest (ms, lower is better)`,
            value: times[Math.floor(times.length / 2)],
            unit: 'ms',
            baseline: scanMs,
            baselineName: 'bitmap xor+runs of the same changes',
          });
          store.close();
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
