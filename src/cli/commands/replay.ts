/** `sevtrack replay LOG`: rebuild the destination from a migration log, verify it, and name each corrupted page's causes. */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../common/errors.js';
import { parseIntIn } from '../../common/units.js';
import { type ReplayReport, replay } from '../../explore/replay.js';
import { renderPlot } from '../../explore/replay-plot.js';
import { PROTOCOLS, type Protocol, VERIFY_MODES, type VerifyMode } from '../../migration/stream.js';
import { oneOf } from '../choice.js';
import { EXIT_CHECK_FAILED, EXIT_OK, runAction } from '../run-action.js';

interface ReplayFlags {
  json?: boolean;
  verify?: string;
  protocol?: string;
  plot?: string;
  limit: string;
}

const ms = (us: number) => `${(us / 1000).toFixed(1)} ms`;

function printReport(r: ReplayReport, plot: string | undefined): void {
  const sent = r.rounds.reduce((n, x) => n + x.sent, 0);
  const out = [
    `replay ${r.path}: ${r.protocol}, ${r.npages} pages, ${r.vcpus} vCPUs, verify ${r.verify}${r.complete ? '' : ' (the log has no end: the run stopped)'}`,
    `rebuilt the destination from ${r.rounds.length} rounds (${sent} pages sent)${r.pause ? `; paused in round ${r.pause.round}${r.pause.downtimeUs !== null ? `, downtime ${ms(r.pause.downtimeUs)}` : ''}` : ''}`,
  ];
  if (r.outcome === 'incomplete') out.push(`no verdict: ${r.incompleteReason}`);
  else if (r.outcome === 'clean')
    out.push(
      `clean: every one of ${r.comparedPages} compared pages reads at the destination as at the source at pause`,
    );
  else out.push(`CORRUPTED: ${r.corruptedCount} of ${r.comparedPages} compared pages`);
  if (r.recorded) {
    const agree =
      r.agreesWithRecord === null
        ? `(recorded under --verify ${r.recorded.mode}; not compared)`
        : r.agreesWithRecord
          ? 'agrees'
          : 'DISAGREES';
    out.push(
      `the engine recorded: ${r.recorded.verified ? 'verified' : `${r.recorded.mismatched} pages corrupted`} (${r.recorded.mode}) — ${agree}`,
    );
  }
  for (const c of r.corrupted) out.push(`  ${c.text}`);
  if (r.corrupted.length < r.corruptedCount)
    out.push(`  ... and ${r.corruptedCount - r.corrupted.length} more (--limit)`);
  const w = r.whatIf;
  if (w) {
    const delta = w.pagesSent - sent;
    out.push(
      `what-if ${w.protocol}: ${w.outcome === 'clean' ? 'would have verified' : `would have corrupted ${w.corrupted.length} pages`} (${w.verify}); ${w.pagesSent} pages sent (${delta >= 0 ? '+' : ''}${delta} against the recorded ${sent}), ${w.cbitResends} of them only for a c-bit change`,
    );
    if (w.unplaced > 0)
      out.push(
        `  (${w.unplaced} guest events could not be placed as the log's constraints ask: the log is inconsistent there)`,
      );
  }
  if (plot) out.push(`plot: ${plot}`);
  process.stdout.write(`${out.join('\n')}\n`);
}

/** Writes the chart; a path that cannot be written is the caller's to fix (exit 2). */
function writePlot(path: string, svg: string): void {
  try {
    writeFileSync(path, svg);
  } catch (err) {
    throw new InvalidArgumentError(
      '--plot',
      `--plot ${path} cannot be written (${(err as Error).message}); pass a file in a writable directory`,
    );
  }
}

export function registerReplay(program: Command): void {
  program
    .command('replay')
    .description(
      'rebuild the destination from a migration log (sevtrack migrate --log), verify every page against the source at pause, and name the events behind each corrupted page',
    )
    .argument('<log>', 'the --log file of a migration (the source side)')
    .option('--verify <mode>', `${VERIFY_MODES.join(' or ')} (default: the mode the migration ran with)`)
    .option('--protocol <name>', `what-if: re-run the recorded guest events under ${PROTOCOLS.join(', ')}`)
    .option('--plot <file.svg>', 'write a per-round timeline chart (SVG) of the migration')
    .option('--limit <n>', 'explain at most this many corrupted pages (all are counted)', '1000')
    .option('--json', 'print the report as one JSON object')
    .action(
      runAction((path: string, f: ReplayFlags) => {
        const verify =
          f.verify === undefined ? undefined : oneOf<VerifyMode>(f.verify, VERIFY_MODES, '--verify');
        const protocol =
          f.protocol === undefined ? undefined : oneOf<Protocol>(f.protocol, PROTOCOLS, '--protocol');
        const limit = parseIntIn(f.limit, '--limit', 0, 2 ** 31);
        const report = replay(path, { verify, protocol, explainLimit: limit });
        if (f.plot) writePlot(f.plot, renderPlot(report));
        if (f.json) process.stdout.write(`${JSON.stringify(report)}\n`);
        else printReport(report, f.plot);
        if (report.outcome === 'corrupted' || report.agreesWithRecord === false) return EXIT_CHECK_FAILED;
        return EXIT_OK;
      }),
    );
}
