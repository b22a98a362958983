/**
 * `sevtrack migrate --backend kvm` end to end: two real VMs in this process
 * (the destination in this thread), each figure against the sim backend
 * migrating a guest of the same size and workload in the same run (the same
 * engine, XTS instead of the keystream, worker-thread vCPUs instead of
 * KVM's). Both pause after at most 8 rounds whatever the estimate: the kvm
 * guest runs unpaced and may outrun a loaded machine's stream, and a figure
 * of a paused-anyway run beats no figure. Skips, naming the reason, without
 * a usable /dev/kvm.
 */
import { DEFAULT_PARAMS, type MigrateParams, migrateLocally } from '../../src/migration/run-migration.js';
import type { MigrationSummary } from '../../src/migration/source.js';
import { kvmSkipReason } from '../../src/vmm/kvm/availability.js';
import type { BenchGroup } from '../harness.js';
import { noteDowntimePhases, pagesPerSecond } from '../support/throughput.js';

const MIB = 2 ** 20;

async function migrate(p: Partial<MigrateParams>): Promise<MigrationSummary> {
  const { summary } = await migrateLocally({
    ...DEFAULT_PARAMS,
    workload: 'churn',
    maxRounds: 8,
    onNoConvergence: 'pause',
    ...p,
  });
  if (!summary.verified)
    process.stderr.write(`kvm-migrate: ${p.backend ?? 'sim'} run not verified: ${summary.message}\n`);
  return summary;
}

const flag = (s: MigrationSummary) => (s.verified ? '' : ' [UNVERIFIED]');

export const kvmMigrateGroup: BenchGroup = {
  name: 'kvm-migrate',
  description: 'migrate --backend kvm (two real VMs) vs the sim backend, same size and workload, same run',
  async run(report) {
    const skip = kvmSkipReason();
    if (skip) {
      process.stderr.write(`kvm-migrate: skipped: ${skip}\n`);
      return;
    }
    for (const memoryBytes of [64 * MIB, 256 * MIB]) {
      const kvm = await migrate({ backend: 'kvm', memoryBytes });
      const sim = await migrate({ backend: 'sim', memoryBytes });
      const what = `${memoryBytes / MIB} MiB churn, 2 vCPUs, safe`;
      noteDowntimePhases(`kvm-migrate ${what}, kvm`, kvm);
      noteDowntimePhases(`kvm-migrate ${what}, sim`, sim);
      report({
        name: `kvm migration pages/s, ${what}, ${kvm.rounds} rounds${flag(kvm)}`,
        value: pagesPerSecond(kvm),
        unit: 'pages/s',
        baseline: pagesPerSecond(sim),
        baselineName: `sim backend, ${sim.rounds} rounds${flag(sim)}`,
      });
      report({
        name: `kvm migration downtime, ${what} (ms, lower is better)${flag(kvm)}`,
        value: kvm.downtimeMs,
        unit: 'ms',
        baseline: sim.downtimeMs,
        baselineName: `sim backend${flag(sim)}`,
      });
    }
  },
};
