/**
 * `safe` with real vCPU threads racing the engine: for 20 seeds of every
 * workload the destination's view of every page equals the source's at
 * pause, including churn on 2 vCPUs converting pages during the rounds.
 */
import { describe, expect, it } from 'vitest';
import { WORKLOADS } from '../../src/guest/workloads.js';
import { DEFAULT_PARAMS, migrateLocally } from '../../src/migration/run-migration.js';

describe('safe protocol with threaded guests', () => {
  for (const workload of WORKLOADS) {
    it(`verifies with 0 mismatched pages for 20 seeds of ${workload}`, async () => {
      for (let seed = 1; seed <= 20; seed++) {
        const { summary } = await migrateLocally({
          ...DEFAULT_PARAMS,
          memoryBytes: 8 * 2 ** 20,
          vcpus: workload === 'churn' ? 3 : 2,
          workload,
          seed,
          warmupMs: 20,
          // Force several live rounds so conversions race the rounds.
          maxDowntimeMs: 0,
          onNoConvergence: 'pause' as const,
          maxRounds: 4,
        });
        expect(summary.mismatchedPages, `${workload} seed ${seed}: ${summary.message}`).toBe(0);
        expect(summary.verified).toBe(true);
        expect(summary.rounds).toBeGreaterThanOrEqual(2);
      }
    }, 300_000);
  }
});

describe('the same threaded runs catch an unsafe variant', () => {
  it('no-cbit-dirty corrupts a churning guest under strict for some seed', async () => {
    let corrupted = 0;
    for (let seed = 1; seed <= 10 && corrupted === 0; seed++) {
      const { summary } = await migrateLocally({
        ...DEFAULT_PARAMS,
        memoryBytes: 8 * 2 ** 20,
        vcpus: 2,
        workload: 'churn',
        protocol: 'no-cbit-dirty',
        seed,
        warmupMs: 20,
        maxDowntimeMs: 0,
        onNoConvergence: 'pause' as const,
        maxRounds: 4,
      });
      corrupted = summary.mismatchedPages;
    }
    expect(corrupted).toBeGreaterThan(0);
  }, 120_000);
});

describe('digests taken before the pause (guests of 128 MiB and more)', () => {
  it('still verify safe exactly and still catch an unsafe variant', async () => {
    const base = {
      ...DEFAULT_PARAMS,
      memoryBytes: 128 * 2 ** 20,
      workload: 'churn' as const,
      vcpus: 2,
      warmupMs: 50,
    };
    const safe = await migrateLocally({ ...base, protocol: 'safe' });
    expect(safe.summary.verified, safe.summary.message).toBe(true);
    let corrupted = 0;
    for (let seed = 1; seed <= 4 && corrupted === 0; seed++) {
      const { summary } = await migrateLocally({
        ...base,
        protocol: 'naive',
        seed,
        maxDowntimeMs: 0,
        onNoConvergence: 'pause' as const,
        maxRounds: 4,
      });
      corrupted = summary.mismatchedPages;
    }
    expect(corrupted).toBeGreaterThan(0);
  }, 180_000);
});
