/** `sevtrack explore`: search interleavings of guest and host events for corrupted pages, per protocol variant. */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../common/errors.js';
import { parseIntIn } from '../../common/units.js';
import { type ExploreReport, explore } from '../../explore/explorer.js';
import { CONTRACTS, type Contract } from '../../explore/model.js';
import { PROTOCOLS, type Protocol, VERIFY_MODES, type VerifyMode } from '../../migration/stream.js';
import { oneOf } from '../choice.js';
import { CheckFailedError, runAction } from '../run-action.js';

interface ExploreFlags {
  protocol: string;
  schedules: string;
  exhaustive?: boolean;
  vcpus: string;
  pages: string;
  seed: string;
  contract: string;
  verify: string;
  json?: boolean;
}

const DEFAULT_SCHEDULES = '10000';

function printReport(r: ExploreReport): void {
  const how =
    r.mode === 'exhaustive'
      ? 'every schedule'
      : `${r.protocols[0]?.schedules ?? 0} random schedules per protocol (seed ${r.seed})`;
  const out = [
    `explore: ${how} of ${r.vcpus} vCPU${r.vcpus > 1 ? 's' : ''} over ${r.pages} page${r.pages > 1 ? 's' : ''}, ${r.opsPerVcpu} guest operations per vCPU, up to ${r.maxRounds} live rounds; contract ${r.contract}, verify ${r.verify}`,
    '',
    `${'protocol'.padEnd(15)} ${'schedules'.padStart(14)} ${'corrupted'.padStart(14)}  ${'expected'.padEnd(9)} result`,
  ];
  for (const p of r.protocols) {
    out.push(
      `${p.protocol.padEnd(15)} ${String(p.schedules).padStart(14)} ${String(p.corrupted).padStart(14)}  ${(p.expected === 'never' ? 'never' : 'corrupts').padEnd(9)} ${p.asExpected ? 'as expected' : 'NOT AS EXPECTED'}`,
    );
  }
  for (const p of r.protocols) {
    if (!p.counterexample) continue;
    out.push('', `shortest counterexample for ${p.protocol} (${p.counterexample.events} events):`);
    for (const line of p.counterexample.timeline) out.push(`  ${line}`);
  }
  out.push('', `took ${(r.elapsedMs / 1000).toFixed(1)} s`);
  process.stdout.write(`${out.join('\n')}\n`);
}

export function registerExplore(program: Command): void {
  program
    .command('explore')
    .description(
      'run seeded random (or all) interleavings of guest c-bit changes and writes with the migration thread, per protocol variant, and check the outcomes docs/design.md expects',
    )
    .option('--protocol <name>', `protocol variant: ${PROTOCOLS.join(', ')} or all`, 'all')
    .option('--schedules <n>', 'random schedules per protocol', DEFAULT_SCHEDULES)
    .option('--exhaustive', 'every schedule of the model instead of random ones (small models only)')
    .option('--vcpus <n>', 'guest vCPUs (1-4)', '2')
    .option('--pages <n>', 'guest pages (1-8)', '2')
    .option('--seed <n>', 'seed of the random schedules', '1')
    .option(
      '--contract <kind>',
      'kept (rule 5) or broken (another vCPU writes while a notification is in flight)',
      'kept',
    )
    .option(
      '--verify <mode>',
      'strict (every page) or defined (pages written since their last conversion)',
      'strict',
    )
    .option('--json', 'print the report as one JSON object')
    .action(
      runAction((f: ExploreFlags, cmd: Command) => {
        if (f.exhaustive && cmd.getOptionValueSource('schedules') === 'cli')
          throw new InvalidArgumentError(
            '--schedules',
            '--schedules and --exhaustive exclude each other; pick one',
          );
        const protocols: readonly Protocol[] =
          f.protocol === 'all' ? PROTOCOLS : [oneOf<Protocol>(f.protocol, PROTOCOLS, '--protocol')];
        const tty = process.stderr.isTTY && !f.json;
        const vcpus = parseIntIn(f.vcpus, '--vcpus', 1, 4);
        const contract = oneOf<Contract>(f.contract, CONTRACTS, '--contract');
        if (contract === 'broken' && vcpus < 2)
          throw new InvalidArgumentError(
            '--contract',
            '--contract broken needs --vcpus 2 or more: a second vCPU breaks it by writing while the first one notifies',
          );
        const report = explore({
          protocols,
          schedules: parseIntIn(f.schedules, '--schedules', 1, 100_000_000),
          exhaustive: f.exhaustive ?? false,
          vcpus,
          pages: parseIntIn(f.pages, '--pages', 1, 8),
          seed: parseIntIn(f.seed, '--seed', 0, 2 ** 32 - 1),
          contract,
          verify: oneOf<VerifyMode>(f.verify, VERIFY_MODES, '--verify'),
          onProgress: tty
            ? (protocol, done, total) =>
                process.stderr.write(`\r\x1b[K${protocol}: ${done}/${total} schedules`)
            : undefined,
        });
        if (tty) process.stderr.write('\r\x1b[K');
        if (f.json) process.stdout.write(`${JSON.stringify(report)}\n`);
        else printReport(report);
        if (!report.asExpected) {
          const off = report.protocols.filter((p) => !p.asExpected);
          throw new CheckFailedError(
            off
              .map((p) =>
                p.expected === 'never'
                  ? `${p.protocol} corrupted ${p.corrupted} schedules where docs/design.md expects none`
                  : `${p.protocol} corrupted no schedule where docs/design.md expects corruption (try more --schedules)`,
              )
              .join('; '),
          );
        }
        return 0;
      }),
    );
}
