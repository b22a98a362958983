/**
 * The other half of docs/design.md §3's table with real vCPU threads (see
 * negative-controls.test.ts, same guest and read cost): safe never corrupts,
 * and no-cbit-dirty never corrupts under `defined` (the pages it gets wrong
 * were converted and not rewritten: undefined content, skipped and counted).
 */
import { describe, expect, it } from 'vitest';
import { migrateLocally } from '../../src/migration/run-migration.js';
import { CHURN } from './churn-params.js';

const SEEDS = 4;

describe('controls that must hold (churn, 2 vCPUs, 64 MiB)', () => {
  for (const verify of ['strict', 'defined'] as const) {
    it(`safe never corrupts under ${verify} (${SEEDS} seeds)`, async () => {
      for (let seed = 1; seed <= SEEDS; seed++) {
        const { summary } = await migrateLocally({ ...CHURN, protocol: 'safe', verify, seed });
        expect(summary.mismatchedPages, `seed ${seed}: ${summary.message}`).toBe(0);
        expect(summary.verified).toBe(true);
        expect(summary.comparedPages).toBeGreaterThan(0);
        if (verify === 'strict') expect(summary.skippedPages).toBe(0);
        expect(summary.comparedPages + summary.skippedPages).toBe(16384);
      }
    }, 120_000);
  }

  it(`no-cbit-dirty never corrupts under defined (${SEEDS} seeds), skipping the undefined pages`, async () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      const { summary } = await migrateLocally({
        ...CHURN,
        protocol: 'no-cbit-dirty',
        verify: 'defined',
        seed,
      });
      expect(summary.mismatchedPages, `seed ${seed}: ${summary.message}`).toBe(0);
      expect(summary.verified).toBe(true);
      expect(summary.skippedPages).toBeGreaterThan(0);
      expect(summary.skipReason).toMatch(/undefined/);
    }
  }, 120_000);
});
