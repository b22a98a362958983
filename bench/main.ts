/** Entry of `npm run bench [-- --json] [-- GROUP ...]`. */
import { bitmapGroup } from './groups/bitmap.js';
import { exploreGroup } from './groups/explore.js';
import { guestGroup } from './groups/guest.js';
import { hostCommitGroup } from './groups/host-commit.js';
import { hostIngestGroup } from './groups/host-ingest.js';
import { hostMemoryGroup } from './groups/host-memory.js';
import { hostRecoveryGroup } from './groups/host-recovery.js';
import { hostSyncGroup } from './groups/host-sync.js';
import { migrateGroup } from './groups/migrate.js';
import { pageStateGroup } from './groups/page-state.js';
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
  migrateGroup,
  exploreGroup,
  sysgenidGroup,
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
