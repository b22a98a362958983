/**
 * The cost of the migration log (docs/migration-log.md): throughput of a
 * churning 2-vCPU guest migrated with `--log` against the same migration
 * without it, measured alternately in the same run (the ratio is the
 * figure: logging must not halve it), and the size of the log of a 2 GiB
 * churning guest against the guest's memory.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_PARAMS, type MigrateParams, migrateLocally } from '../../src/migration/run-migration.js';
import type { BenchGroup } from '../harness.js';

const CHURN: MigrateParams = {
  ...DEFAULT_PARAMS,
  memoryBytes: 256 * 2 ** 20,
  vcpus: 2,
  workload: 'churn',
  warmupMs: 100,
  // The figure is throughput: pause even where the downtime target is missed.
  onNoConvergence: 'pause',
};

/** Pages per second of one migration (handshake to verdict), with a log at `log` or none. */
async function rate(p: MigrateParams, log?: string): Promise<{ pagesPerSecond: number; rounds: number }> {
  const { summary } = await migrateLocally({ ...p, log });
  if (!summary.verified) throw new Error(`benchmark migration failed verification: ${summary.message}`);
  return { pagesPerSecond: summary.pagesSent / (summary.totalMs / 1000), rounds: summary.rounds };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export const migrateLogGroup: BenchGroup = {
  name: 'migrate-log',
  description: 'migration throughput with and without --log (churn), and the log size of a 2 GiB guest',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-log-'));
    try {
      const withLog: number[] = [];
      const without: number[] = [];
      // Alternate, so drift on a shared machine hits both alike.
      for (let i = 0; i < 5; i++) {
        without.push((await rate({ ...CHURN, seed: i + 1 })).pagesPerSecond);
        withLog.push((await rate({ ...CHURN, seed: i + 1 }, join(dir, `run-${i}.db`))).pagesPerSecond);
      }
      report({
        name: 'migrate 256 MiB churn guest with --log (median of 5)',
        value: median(withLog),
        unit: 'pages/s',
        baseline: median(without),
        baselineName: 'the same migration without --log',
      });

      const big = join(dir, 'big.db');
      const r = await rate({ ...CHURN, memoryBytes: 2 * 2 ** 30 }, big);
      report({
        name: `log size, 2 GiB churn guest (${r.rounds} rounds; lower is better)`,
        value: statSync(big).size,
        unit: 'bytes',
        baseline: 2 * 2 ** 30,
        baselineName: 'guest memory',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
