/** `sevtrack decode`: decode one KVM_HC_MAP_GPA_RANGE hypercall as the host would. */
import type { Command } from 'commander';
import { decodeHypercall } from '../../common/kvm-abi.js';
import { PAGE_SIZE } from '../../common/ranges.js';
import { parseSize, parseU64 } from '../../common/units.js';
import { CheckFailedError, runAction } from '../run-action.js';

export function registerDecode(program: Command): void {
  program
    .command('decode')
    .description('decode one hypercall (nr, a0, a1, a2) and print the change or the KVM return code')
    .requiredOption('--a0 <gpa>', 'a0: guest physical address (decimal or 0x hex)')
    .requiredOption('--a1 <npages>', 'a1: number of 4 KiB pages')
    .requiredOption('--a2 <attrs>', 'a2: attributes (bits 3:0 page size, bit 4 encrypted)')
    .option('--nr <nr>', 'hypercall number', '12')
    .option('--memory <size>', 'guest memory size (e.g. 256M, 1T)', '1T')
    .option('--json', 'print one JSON object')
    .action(
      runAction(
        (opts: { a0: string; a1: string; a2: string; nr: string; memory: string; json?: boolean }) => {
          const guestPages = Math.floor(parseSize(opts.memory, '--memory') / PAGE_SIZE);
          const r = decodeHypercall(
            parseU64(opts.nr, '--nr'),
            parseU64(opts.a0, '--a0'),
            parseU64(opts.a1, '--a1'),
            parseU64(opts.a2, '--a2'),
            guestPages,
          );
          if (opts.json) {
            process.stdout.write(`${JSON.stringify(r.ok ? { ret: 0, ...r.change } : r)}\n`);
          } else if (r.ok) {
            const c = r.change;
            process.stdout.write(
              `ret 0: gfn ${c.gfn} npages ${c.npages} -> ${c.encrypted ? 'encrypted' : 'shared'} (size hint ${c.pageSizeCode})\n`,
            );
          }
          if (!r.ok) {
            if (opts.json) return 1;
            throw new CheckFailedError(`ret ${r.ret}: ${r.message}`);
          }
          return 0;
        },
      ),
    );
}
