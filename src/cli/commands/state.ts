/** `sevtrack state`: what a host database holds, per VM. */
import type { Command } from 'commander';
import { KVM_MIGRATION_READY } from '../../common/kvm-abi.js';
import { PAGE_SIZE, type StateRange } from '../../common/ranges.js';
import { formatBytes, parseIntIn } from '../../common/units.js';
import { CbitStore } from '../../host/cbit-store.js';
import { checkDatabase } from '../../host/integrity.js';
import { CheckFailedError, runAction } from '../run-action.js';

interface StateOptions {
  db: string;
  vm?: string;
  from: string;
  limit: string;
  json?: boolean;
  check?: boolean;
}

/** `state --check`: the full integrity check; exit 1 when it finds a problem. */
function runCheck(opts: StateOptions): number {
  const report = checkDatabase(opts.db);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } else {
    for (const line of report.sqlite) process.stdout.write(`sqlite: ${line}\n`);
    for (const v of report.vms) {
      process.stdout.write(
        `vm ${v.vm}: ${v.changes} changes in ${v.segments} segments, ${v.checkpoints} checkpoints, ${v.syncs} syncs: ${v.problems.length === 0 ? 'ok' : `${v.problems.length} problem(s)`}\n`,
      );
      for (const p of v.problems) process.stdout.write(`  ${p}\n`);
    }
  }
  if (!report.ok) throw new CheckFailedError(`${opts.db}: integrity check failed`);
  return 0;
}

export function registerState(program: Command): void {
  program
    .command('state')
    .description('show the VMs of a host database: page counts, ranges (paged), last sync, change-log length')
    .requiredOption('--db <file>', 'SQLite database file of `sevtrack serve`')
    .option('--vm <id>', 'only this VM')
    .option('--from <gfn>', 'list ranges starting with the one holding this gfn', '0')
    .option('--limit <n>', 'list at most this many ranges per VM (0 = none)', '20')
    .option('--json', 'print one JSON object')
    .option('--check', 'check the whole database (checksums, sequence, checkpoints); exit 1 on a problem')
    .action(
      runAction((opts: StateOptions) => {
        if (opts.check) return runCheck(opts);
        const from = parseIntIn(opts.from, '--from', 0, Number.MAX_SAFE_INTEGER);
        const limit = parseIntIn(opts.limit, '--limit', 0, 10_000_000);
        const store = CbitStore.open(opts.db, { readonly: true });
        try {
          const ids = opts.vm === undefined ? store.vmIds() : [parseIntIn(opts.vm, '--vm', 0, 0xffff_ffff)];
          const vms = ids.map((id) => {
            const info = store.info(id);
            const ranges: StateRange[] = [];
            let nextGfn: number | null = null;
            if (limit > 0) {
              for (const r of store.state(id).ranges(from)) {
                if (ranges.length === limit) {
                  nextGfn = r.gfn;
                  break;
                }
                ranges.push(r);
              }
            }
            return {
              ...info,
              migrationControl: Number(info.migrationControl),
              ready: (info.migrationControl & KVM_MIGRATION_READY) !== 0n,
              ranges,
              nextGfn,
              migrations: store.migrationRecords(id),
            };
          });
          if (opts.json) {
            process.stdout.write(`${JSON.stringify({ db: opts.db, vms })}\n`);
            return 0;
          }
          if (vms.length === 0) process.stdout.write(`${opts.db}: no VMs\n`);
          for (const v of vms) {
            process.stdout.write(
              `vm ${v.id}: ${v.npages} pages (${formatBytes(v.npages * PAGE_SIZE)}), ${v.encryptedPages} encrypted, ${v.sharedPages} shared, ${v.rangeCount} ranges; ` +
                `change log ${v.logLength} (last seq ${v.lastSeq}), last sync ${v.lastSyncSeq}; migration ${v.ready ? 'READY' : 'not ready'}\n`,
            );
            for (const r of v.ranges) {
              process.stdout.write(`  gfn ${r.gfn} +${r.npages} ${r.encrypted ? 'encrypted' : 'shared'}\n`);
            }
            if (v.nextGfn !== null) process.stdout.write(`  ... more: --from ${v.nextGfn}\n`);
            for (const m of v.migrations) {
              const syncs = m.syncs.map((x) => x.seq).join(', ');
              process.stdout.write(
                `  migration ${m.id} to ${m.destination}, started ${m.startedAt} at seq ${m.startSeq}: ${m.outcome ?? 'open'}; syncs at seq ${syncs || 'none'}${m.message ? `; ${m.message}` : ''}\n`,
              );
            }
          }
          return 0;
        } finally {
          store.close();
        }
      }),
    );
}
