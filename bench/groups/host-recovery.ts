/**
 * Recovery after a crash (issue: bounded recovery): the time `CbitStore.open`
 * takes on the crash image of a database that took 10M and 50M changes with
 * no sync, against replaying its whole change log (what recovery costs
 * without continuous checkpoints), measured in the same run.
 */
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CbitStore } from '../../src/host/cbit-store.js';
import { forEachRecord } from '../../src/host/change-segment.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import type { BenchGroup } from '../harness.js';
import { realisticChanges } from './host-ingest.js';

const NPAGES = 2 ** 20; // 4 GiB guest
const BATCH = 65_536;

function ms(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Replays every segment of vm 1 from the initial state: recovery with no checkpoint after seq 0. */
function fullReplayMs(path: string): number {
  const db = new Database(path, { readonly: true });
  const start = process.hrtime.bigint();
  const state = new PageStateMap(NPAGES);
  const rows = db
    .prepare('SELECT count, records FROM change_segments WHERE vm = 1 ORDER BY first_seq')
    .iterate() as IterableIterator<{ count: number; records: Buffer }>;
  for (const seg of rows) forEachRecord(seg.records, seg.count, (gfn, n, enc) => state.apply(gfn, n, enc));
  const took = ms(start);
  db.close();
  return took;
}

export const hostRecoveryGroup: BenchGroup = {
  name: 'host-recovery',
  description: 'open() after a crash with 10M / 50M changes since the last sync vs replaying the whole log',
  run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const path = join(dir, 'live.db');
      const store = CbitStore.open(path, { synchronous: 'NORMAL' });
      store.registerVm(1, NPAGES);
      store.sync(1);
      let applied = 0;
      let seed = 1;
      for (const target of [10_000_000, 50_000_000]) {
        while (applied < target) {
          for (const c of realisticChanges(BATCH, seed++, NPAGES)) store.applyChange(1, c);
          store.commit();
          applied += BATCH;
        }
        // The crash image: the database and its WAL as a kill -9 leaves them.
        const image = join(dir, `crash-${target}.db`);
        copyFileSync(path, image);
        if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${image}-wal`);
        const start = process.hrtime.bigint();
        const recovered = CbitStore.open(image);
        const recoveryMs = ms(start);
        if (recovered.info(1).lastSeq !== applied) throw new Error('recovery lost changes');
        recovered.close();
        report({
          name: `recovery after ${target / 1e6}M changes without a sync (ms, lower is better)`,
          value: recoveryMs,
          unit: 'ms',
          baseline: fullReplayMs(image),
          baselineName: 'replay of the whole log',
        });
        rmSync(image, { force: true });
        rmSync(`${image}-wal`, { force: true });
      }
      store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
