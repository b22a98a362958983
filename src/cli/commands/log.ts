/** `sevtrack log show LOG [--json]`: what a migration log holds, per round (docs/migration-log.md). */
import type { Command } from 'commander';
import type { PageRange } from '../../common/ranges.js';
import { MigrationLogReader } from '../../migration/log-reader.js';
import { type LogSummary, summarizeLog } from '../../migration/log-summary.js';
import { runAction } from '../run-action.js';

function runsText(runs: readonly PageRange[]): string {
  return runs.map((r) => (r.npages === 1 ? `${r.gfn}` : `${r.gfn}+${r.npages}`)).join(', ');
}

function print(path: string, s: LogSummary): void {
  const m = s.meta;
  const out: string[] = [
    `${path}: migration log v${m.version}, ${m.role}, ${m.npages} pages, ${m.vcpus} vCPUs, protocol ${m.protocol}, verify ${m.verify}, started ${m.startedAt}`,
    s.complete
      ? `complete: ${s.events} events in ${s.commits} commits`
      : `INCOMPLETE (no end event: the run stopped; ${s.events} events in ${s.commits} commits up to round ${s.rounds.at(-1)?.round ?? 0})`,
  ];
  for (const r of s.rounds) {
    const syncs = r.syncs
      .map((y) => `sync (${y.previousSeq}, ${y.seq}] ${y.changedPages} changed`)
      .join(', ');
    out.push(
      `  round ${r.round}${r.paused ? ' (paused)' : ''}: harvested ${r.harvested}` +
        `${syncs ? `, ${syncs}` : ''}, sent ${r.sentEncrypted} encrypted + ${r.sentShared} shared` +
        `${r.resent ? `, ${r.resent} resent for their c-bit` : ''}` +
        `${r.finalDiff !== null ? `, final diff ${r.finalDiff}` : ''}${r.finished ? '' : ' (unfinished)'}`,
    );
  }
  const c = s.conversions;
  const byVcpu = Object.entries(c.byVcpu)
    .map(([v, n]) => `vCPU ${v}: ${n}`)
    .join(', ');
  out.push(
    c.count === 0
      ? 'conversions: none'
      : `conversions: ${c.count} (seq ${c.firstSeq}..${c.lastSeq}; ${byVcpu})`,
  );
  if (s.notConverging !== null) out.push(`not converging: ${s.notConverging}`);
  const v = s.verification;
  if (v)
    out.push(
      v.verified
        ? `verification (${v.mode}): every page verified`
        : `verification (${v.mode}): ${v.mismatched} pages corrupted: ${runsText(v.corrupted)}`,
    );
  if (s.resumed) out.push(`resumed on the ${s.resumed}`);
  if (s.generation) out.push(`generation ${s.generation.before} -> ${s.generation.after}`);
  if (s.abort !== null) out.push(`aborted: ${s.abort}`);
  process.stdout.write(`${out.join('\n')}\n`);
}

export function registerLog(program: Command): void {
  const log = program.command('log').description('read migration logs (sevtrack migrate --log)');
  log
    .command('show')
    .description(
      'check a migration log and show it per round: harvests, syncs, sends, pause, verdict, corrupted pages',
    )
    .argument('<log>', 'the --log file of a migration')
    .option('--json', 'print one JSON object (with every event)')
    .action(
      runAction((path: string, opts: { json?: boolean }) => {
        const reader = MigrationLogReader.open(path);
        try {
          const summary = summarizeLog(reader.contents);
          if (opts.json) {
            const events = reader.events.map((e) => ({
              id: e.id,
              tUs: e.tUs,
              kind: e.kind,
              round: e.round,
              detail: e.detail,
              runs: e.runs,
              states: e.states,
            }));
            process.stdout.write(`${JSON.stringify({ path, ...summary, events })}\n`);
          } else {
            print(path, summary);
          }
          return 0;
        } finally {
          reader.close();
        }
      }),
    );
}
