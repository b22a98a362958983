/**
 * sync() time with 10, 1k and 100k changes since the previous sync on 4 GiB,
 * 64 GiB and 1 TiB guests, against a full-bitmap scan of the same guest size
 * (XOR of two state bitmaps, then runs), measured in the same run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type BenchGroup, medianMs } from '../harness.js';
import { realisticChanges } from './host-ingest.js';

const SIZES: [string, number][] = [
  ['4 GiB', 2 ** 20],
  ['64 GiB', 2 ** 24],
  ['1 TiB', 2 ** 28],
];

export const hostSyncGroup: BenchGroup = {
  name: 'host-sync',
  description: 'sync() latency vs a full-bitmap scan of the same guest',
  run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      for (const [label, npages] of SIZES) {
        // The bitmap baseline: diff two full state bitmaps of this guest.
        const before = new PageBitmap(npages);
        const after = new PageBitmap(npages);
        after.setRange(npages >> 1, 1000);
        const scanMs = medianMs(() => {
          const x = after.clone().xor(before);
          x.runs();
        }, 5);
        for (const count of [10, 1000, 100_000]) {
          const store = CbitStore.open(join(dir, `${label}-${count}.db`.replace(/ /g, '')), {
            synchronous: 'NORMAL',
          });
          store.registerVm(1, npages);
          // A guest that already has a fragmented state (a boot storm), synced once.
          store.applyBatch(1, realisticChanges(20_000, 5, npages));
          store.sync(1);
          const rounds = count >= 100_000 ? 3 : 7;
          const batches = Array.from({ length: rounds + 1 }, (_, i) =>
            realisticChanges(count, 100 + i, npages),
          );
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
            baselineName: 'bitmap xor+scan',
          });
          store.close();
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
