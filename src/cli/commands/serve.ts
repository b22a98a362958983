/** `sevtrack serve`: the host service on a Unix socket until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../common/errors.js';
import { CbitStore } from '../../host/cbit-store.js';
import { HostService } from '../../host/service-server.js';
import { runAction } from '../run-action.js';

interface ServeOptions {
  db: string;
  socket: string;
  group?: string;
  synchronous: string;
  quiet?: boolean;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the host service: durable c-bit state in SQLite, served on a Unix socket')
    .requiredOption('--db <file>', 'SQLite database file (created if missing)')
    .requiredOption('--socket <path>', 'Unix socket path (mode 0600; a stale socket is replaced)')
    .option('--group <name>', 'make the socket group-accessible (0660) for this group')
    .option(
      '--synchronous <level>',
      'SQLite durability: full (survives power loss) or normal (survives a crash)',
      'full',
    )
    .option('--quiet', 'print nothing but errors')
    .action(
      runAction(async (opts: ServeOptions) => {
        const level = opts.synchronous.toUpperCase();
        if (level !== 'FULL' && level !== 'NORMAL') {
          throw new InvalidArgumentError(
            '--synchronous',
            `--synchronous "${opts.synchronous}" must be full or normal`,
          );
        }
        const store = CbitStore.open(opts.db, { synchronous: level });
        let service: HostService;
        try {
          service = await HostService.start({
            store,
            socketPath: opts.socket,
            group: opts.group,
            log: opts.quiet ? undefined : (line) => process.stderr.write(`sevtrack serve: ${line}\n`),
          });
        } catch (err) {
          store.close();
          throw err;
        }
        if (!opts.quiet) {
          process.stderr.write(
            `sevtrack serve: listening on ${opts.socket} (db ${opts.db}, ${store.vmIds().length} VMs)\n`,
          );
        }
        // SIGTERM drains: every request already received is answered and committed.
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGTERM', stop);
          process.once('SIGINT', stop);
        });
        await service.stop();
        store.close();
        if (!opts.quiet) process.stderr.write('sevtrack serve: stopped\n');
        return 0;
      }),
    );
}
