/**
 * Entry of `npm run bench [-- --json] [-- GROUP ...]`, run compiled: the
 * script compiles src and bench (tsconfig.bench.json) into build/bench and runs
 * node on build/bench/bench/main.js, so figures are those of the shipped code.
 */
import { bitmapGroup } from './groups/bitmap.js';
import { exploreGroup } from './groups/explore.js';
import { guestGroup } from './groups/guest.js';
import { hostCommitGroup } from './groups/host-commit.js';
import { hostIngestGroup } from './groups/host-ingest.js';
import { hostMemoryGroup } from './groups/host-memory.js';
import { hostRecoveryGroup } from './groups/host-recovery.js';
import { hostSyncGroup } from './groups/host-sync.js';
import { kvmGroup } from './groups/kvm.js';
import { kvmMigrateGroup } from './groups/kvm-migrate.js';
import { memoryGroup } from './groups/memory.js';
import { migrateGroup } from './groups/migrate.js';
import { migrateLogGroup } from './groups/migrate-log.js';
import { pageStateGroup } from './groups/page-state.js';
import { pipelineGroup } from './groups/pipeline.js';
import { pspGroup } from './groups/psp.js';
import { replayGroup } from './groups/replay.js';
import { sysgenidGroup } from './groups/sysgenid.js';
import type { BenchGroup } from './harness.js';
import { runGroups } from './harness.js';

const groups: BenchGroup[] = [
  pageStateGroup,
  bitmapGroup,
  hostIngestGroup,
  hostSyncGroup,
  hostCommitGroup,
  hostMemoryGroup,
  hostRecoveryGroup,
  guestGroup,
  pipelineGroup,
  migrateGroup,
  exploreGroup,
  sysgenidGroup,
  pspGroup,
  memoryGroup,
  kvmGroup,
  kvmMigrateGroup,
  migrateLogGroup,
  replayGroup,
];

const args = process.argv.slice(2);
if (args.includes('--help')) {
  process.stdout.write(
    `usage: npm run bench -- [--json] [GROUP ...]\ngroups:\n${groups.map((g) => `  ${g.name.padEnd(16)} ${g.description}`).join('\n')}\n`,
  );
} else {
  process.exitCode = await runGroups(
    groups,
    args.filter((a) => !a.startsWith('--')),
    args.includes('--json'),
  );
}
