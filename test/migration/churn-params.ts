/**
 * The guest of the threaded negative controls (docs/design.md §3's table):
 * churn on 2 vCPUs, 64 MiB, reads of the dirty log and c-bit state at
 * 100 ns per page (src/vmm/sim/read-cost.ts: a slower host's ioctl, which
 * widens cbit-first's window so that 8 seeds cannot all miss it).
 */
import { DEFAULT_PARAMS, type MigrateParams } from '../../src/migration/run-migration.js';

export const CHURN: MigrateParams = {
  ...DEFAULT_PARAMS,
  memoryBytes: 64 * 2 ** 20,
  vcpus: 2,
  workload: 'churn',
  warmupMs: 100,
  readCostNsPerPage: 100,
};
