/** `sevtrack serve`: the host service on a Unix socket until SIGTERM/SIGINT, which drain it. */
import type { Command } from 'commander';
import { InvalidArgumentError } from '../../common/errors.js';
import { parseSize } from '../../common/units.js';
import { resolveGid } from '../../common/unix-socket.js';
import { CbitStore } from '../../host/cbit-store.js';
import { ownDatabase } from '../../host/db-owner.js';
import {
  checkSocketPath,
  DEFAULT_DRAIN_TIMEOUT_MS,
  DEFAULT_MAX_MEMORY,
  HostService,
} from '../../host/service-server.js';
import { runAction } from '../run-action.js';

interface ServeOptions {
  db: string;
  socket: string;
  group?: string;
  synchronous: string;
  drainTimeout: string;
  maxMemory: string;
  quiet?: boolean;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the host service: durable c-bit state in SQLite, served on a Unix socket')
    .requiredOption('--db <file>', 'SQLite database file (created 0600 if missing; one serve per database)')
    .requiredOption('--socket <path>', 'Unix socket path (mode 0600; a stale socket is replaced)')
    .option('--group <name>', 'make the socket and a new database group-accessible (0660) for this group')
    .option(
      '--synchronous <level>',
      'SQLite durability: full (survives power loss) or normal (survives a crash)',
      'full',
    )
    .option(
      '--drain-timeout <seconds>',
      'on SIGTERM/SIGINT, close connections still busy after this long',
      String(DEFAULT_DRAIN_TIMEOUT_MS / 1000),
    )
    .option(
      '--max-memory <size>',
      'memory the connections may hold (reply queues, partial frames), e.g. 512M, 2G',
      `${DEFAULT_MAX_MEMORY / 2 ** 20}M`,
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
        const drainSeconds = Number(opts.drainTimeout);
        if (!Number.isFinite(drainSeconds) || drainSeconds < 0 || drainSeconds > 3600) {
          throw new InvalidArgumentError(
            '--drain-timeout',
            `--drain-timeout "${opts.drainTimeout}" must be a number of seconds from 0 to 3600`,
          );
        }
        const maxMemory = parseSize(opts.maxMemory, '--max-memory');
        if (maxMemory < 64 * 2 ** 20) {
          throw new InvalidArgumentError(
            '--max-memory',
            `--max-memory ${opts.maxMemory} must be at least 64M`,
          );
        }
        // Refuse a bad setup before anything is created or listened on.
        checkSocketPath(opts.socket);
        const gid = opts.group === undefined ? undefined : resolveGid(opts.group);
        const lock = ownDatabase(opts.db, { gid });
        let store: CbitStore;
        try {
          store = CbitStore.open(opts.db, { synchronous: level });
        } catch (err) {
          lock.release();
          throw err;
        }
        let service: HostService;
        try {
          service = await HostService.start({
            store,
            socketPath: opts.socket,
            group: opts.group,
            maxMemory,
            log: opts.quiet ? undefined : (line) => process.stderr.write(`sevtrack serve: ${line}\n`),
          });
        } catch (err) {
          store.close();
          lock.release();
          throw err;
        }
        // The handlers go in before the 'listening' line: a supervisor may
        // send SIGTERM the moment it reads that line.
        const stopped = new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGTERM', stop);
          process.once('SIGINT', stop);
        });
        if (!opts.quiet) {
          process.stderr.write(
            `sevtrack serve: listening on ${opts.socket} (db ${opts.db}, ${store.vmIds().length} VMs, pid ${process.pid})\n`,
          );
        }
        await stopped;
        // Drain: answer and commit what was received, tell the clients, close; then a clean database.
        await service.stop(drainSeconds * 1000);
        store.close();
        lock.release();
        if (!opts.quiet) process.stderr.write('sevtrack serve: stopped\n');
        return 0;
      }),
    );
}
