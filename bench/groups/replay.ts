/**
 * `sevtrack replay` of a 2 GiB guest's migration log (docs/replay.md): the
 * whole replay (check the log's digest chain and rules, rebuild the
 * destination, verify every page, name each corrupted page's causes), and
 * the what-if under safe, each against the time to just read the log's
 * rows with better-sqlite3 in the same run (the floor of any replay).
 * Two logs: a clean `safe` migration, and a `naive` one whose corrupted
 * pages all get their chain.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { replay } from '../../src/explore/replay.js';
import { DEFAULT_PARAMS, type MigrateParams, migrateLocally } from '../../src/migration/run-migration.js';
import type { Protocol } from '../../src/migration/stream.js';
import type { BenchGroup } from '../harness.js';

const GUEST: MigrateParams = {
  ...DEFAULT_PARAMS,
  memoryBytes: 2 * 2 ** 30,
  vcpus: 2,
  workload: 'churn',
  warmupMs: 100,
  onNoConvergence: 'pause',
};

const timeMs = (fn: () => unknown) => {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Median times of `fn` and of the floor, measured alternately (after one
 * warm-up of each), so drift on a shared machine hits both alike.
 */
function alternate(fn: () => unknown, floor: () => unknown, runs: number): { value: number; limit: number } {
  fn();
  floor();
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < runs; i++) {
    b.push(timeMs(floor));
    a.push(timeMs(fn));
  }
  return { value: median(a), limit: median(b) };
}

/** Reads every row of every table of the log, nothing more. */
function readRows(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    let n = 0;
    for (const t of ['meta', 'events', 'page_runs', 'conversions', 'states', 'commits'])
      n += db.prepare(`SELECT * FROM ${t}`).all().length;
    return n;
  } finally {
    db.close();
  }
}

export const replayGroup: BenchGroup = {
  name: 'replay',
  description: 'replay of a 2 GiB guest migration log, against just reading its rows',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-replay-'));
    try {
      for (const protocol of ['safe', 'naive'] as Protocol[]) {
        const log = join(dir, `${protocol}.db`);
        await migrateLocally({ ...GUEST, protocol, log });
        const rows = readRows(log);
        const first = replay(log);
        const what = `${protocol} log, ${first.rounds.length} rounds, ${rows} rows, ${first.corruptedCount} corrupted pages`;
        const plain = alternate(
          () => replay(log),
          () => readRows(log),
          5,
        );
        report({
          name: `replay 2 GiB guest (${what}; lower is better)`,
          unit: 'ms',
          ...plain,
          limitName: 'reading every row of the log',
        });
        const withSafe = alternate(
          () => replay(log, { protocol: 'safe' }),
          () => readRows(log),
          3,
        );
        report({
          name: `replay 2 GiB guest with what-if safe (${protocol} log; lower is better)`,
          unit: 'ms',
          ...withSafe,
          limitName: 'reading every row of the log',
        });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
