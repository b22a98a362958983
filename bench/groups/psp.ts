/**
 * Migration time against the PSP batch size at a real PSP's rate (400
 * pages/s at one page per call): a 4 MiB all-encrypted idle guest through
 * the `sevtrack migrate` path. The limit is the firmware time the PSP model
 * charges for the same pages in calls of that batch (pspCallMs), so the ratio
 * shows how well the engine keeps the PSP busy.
 */

import { pspCallMs } from '../../src/migration/psp.js';
import { DEFAULT_PARAMS, migrateLocally } from '../../src/migration/run-migration.js';
import type { BenchGroup } from '../harness.js';

const RATE = 400;

export const pspGroup: BenchGroup = {
  name: 'psp',
  description: `migration time vs PSP batch size at --psp-rate ${RATE} (4 MiB all-encrypted guest)`,
  async run(report) {
    for (const batch of [1, 16, 64, 256]) {
      const psp = { rate: RATE, batch };
      const { summary } = await migrateLocally({
        ...DEFAULT_PARAMS,
        memoryBytes: 4 * 2 ** 20,
        workload: 'idle',
        warmupMs: 0,
        guestEncrypted: true,
        psp,
      });
      if (!summary.verified) throw new Error(`benchmark migration failed verification: ${summary.message}`);
      const calls = Math.ceil(summary.sealedPages / batch);
      report({
        name: `migrate with --psp-batch ${batch} (ms, lower is better)`,
        value: summary.totalMs,
        unit: 'ms',
        limit: calls * pspCallMs(psp, Math.min(batch, summary.sealedPages)),
        limitName: `PSP firmware time, ${calls} calls`,
      });
    }
  },
};
