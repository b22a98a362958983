/**
 * `sevtrack sysgenid serve|get|watch|outdated|wait|bump`: the sysgenid
 * service and its clients (docs/sysgenid.md). Exit codes: 0 ok; 1 `wait`
 * timed out (tracked watchers still outdated) or a `watch --exec` command
 * failed; 2 bad input or a refused request (EACCES, EINVAL); 3 aborted (the
 * service is gone, or a `wait` interrupted by a new generation, EINTR).
 */
import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { parseIntIn } from '../../common/units.js';
import { SysgenidClient } from '../../sysgenid/client.js';
import { defaultCounterFile, defaultSocketPath } from '../../sysgenid/counter-file.js';
import { errnoOf } from '../../sysgenid/errors.js';
import { SysgenidService } from '../../sysgenid/service.js';
import { CheckFailedError, runAction } from '../run-action.js';

interface ClientOptions {
  socket: string;
  json?: boolean;
}

const U32_MAX = 0xffff_ffff;

function print(opts: ClientOptions, data: Record<string, unknown>, text: string): void {
  process.stdout.write(opts.json ? `${JSON.stringify(data)}\n` : `${text}\n`);
}

/** Connects, runs fn, disconnects whatever happens. */
async function withClient<T>(socket: string, fn: (c: SysgenidClient) => Promise<T>): Promise<T> {
  const client = await SysgenidClient.connect(socket);
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, ...value.split(',')];
}

/** Runs `command` through /bin/sh with SYSGENID_GENERATION set; resolves with its exit code. */
function runHook(command: string, generation: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, SYSGENID_GENERATION: String(generation) },
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

const SOCKET_OPTION = ['--socket <path>', 'the service socket', defaultSocketPath()] as const;

/** A client subcommand with --socket and --json (described once, here). */
function clientCommand(parent: Command, name: string, description: string, json: string): Command {
  return parent
    .command(name)
    .description(description)
    .option(...SOCKET_OPTION)
    .option('--json', json);
}

/** A subcommand that prints one number the service answers (get, outdated). */
function registerQuery(
  parent: Command,
  name: string,
  description: string,
  field: string,
  query: (c: SysgenidClient) => Promise<number>,
): void {
  clientCommand(parent, name, description, `print {"${field}": N}`).action(
    runAction(async (opts: ClientOptions) => {
      const value = await withClient(opts.socket, query);
      print(opts, { [field]: value }, String(value));
      return 0;
    }),
  );
}

export function registerSysgenid(program: Command): void {
  const cmd = program
    .command('sysgenid')
    .description(
      'system generation id: a counter that grows when a VM is restored, its watchers and overseer',
    );

  cmd
    .command('serve')
    .description('run the sysgenid service until SIGTERM/SIGINT')
    .option(...SOCKET_OPTION)
    .option('--counter-file <file>', 'the counter page (mmap it read-only)', defaultCounterFile())
    .option('--group <name>', 'make the socket group-accessible (0660) for this group (else 0600)')
    .option('--allow-uid <uid>', 'a uid besides root allowed to bump (repeat or comma-separate)', collect, [])
    .option('--quiet', 'print nothing but errors')
    .action(
      runAction(
        async (opts: {
          socket: string;
          counterFile: string;
          group?: string;
          allowUid: string[];
          quiet?: boolean;
        }) => {
          const log = opts.quiet
            ? undefined
            : (line: string) => process.stderr.write(`sevtrack sysgenid: ${line}\n`);
          const service = await SysgenidService.start({
            socketPath: opts.socket,
            counterFile: opts.counterFile,
            group: opts.group,
            allowUids: opts.allowUid.map((v) => parseIntIn(v.trim(), '--allow-uid', 0, U32_MAX)),
            log,
          });
          // Ordering rule: the signal handlers exist before "listening" is printed, so a
          // supervisor that stops the service as soon as it reads that line stops it cleanly.
          const stopped = new Promise<void>((resolve) => {
            process.once('SIGTERM', resolve);
            process.once('SIGINT', resolve);
          });
          log?.(
            `listening on ${opts.socket} (counter file ${opts.counterFile}, generation ${service.generation})`,
          );
          await stopped;
          await service.stop();
          log?.('stopped');
          return 0;
        },
      ),
    );

  registerQuery(cmd, 'get', 'print the current generation', 'generation', (c) => c.get());

  clientCommand(
    cmd,
    'watch',
    'print each new generation, optionally run a command for it, then acknowledge it',
    'print one {"generation": N} line per generation',
  )
    .option('--track', 'be a tracked watcher: an overseer waits for this one to acknowledge')
    .option(
      '--exec <command>',
      'run this shell command per generation (SYSGENID_GENERATION set) before acknowledging',
    )
    .option('--count <n>', 'exit after this many generations (0 = run until SIGTERM/SIGINT)', '0')
    .action(
      runAction(async (opts: ClientOptions & { track?: boolean; exec?: string; count: string }) => {
        const count = parseIntIn(opts.count, '--count', 0, Number.MAX_SAFE_INTEGER);
        const client = await SysgenidClient.connect(opts.socket);
        const stop = () => void client.close();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
        try {
          if (opts.track) await client.setTracking(true);
          process.stderr.write(
            `sevtrack sysgenid: watching at generation ${await client.get()}${opts.track ? ' (tracked)' : ''}\n`,
          );
          let seen = 0;
          for await (const generation of client.generations()) {
            print(opts, { generation }, String(generation));
            if (opts.exec !== undefined) {
              const code = await runHook(opts.exec, generation);
              if (code !== 0) {
                throw new CheckFailedError(
                  `--exec command exited with ${code} for generation ${generation}; generation not acknowledged`,
                );
              }
            }
            await client.acknowledge(generation);
            if (++seen === count) break;
          }
          return 0;
        } finally {
          process.off('SIGTERM', stop);
          process.off('SIGINT', stop);
          await client.close();
        }
      }),
    );

  registerQuery(
    cmd,
    'outdated',
    'print how many tracked watchers have not acknowledged the current generation',
    'outdated',
    (c) => c.outdated(),
  );

  clientCommand(
    cmd,
    'wait',
    'wait until every tracked watcher acknowledged the current generation',
    'print {"acknowledged": bool, "outdated": N}',
  )
    .requiredOption('--timeout <ms>', 'give up after this many ms (0 = wait forever)')
    .action(
      runAction(async (opts: ClientOptions & { timeout: string }) => {
        const timeoutMs = parseIntIn(opts.timeout, '--timeout', 0, U32_MAX);
        return withClient(opts.socket, async (c) => {
          try {
            await c.waitWatchers(timeoutMs);
          } catch (err) {
            if (errnoOf(err) !== 'ETIME') throw err;
            const outdated = await c.outdated();
            if (opts.json) print(opts, { acknowledged: false, outdated }, '');
            throw new CheckFailedError(`${outdated} tracked watcher(s) still outdated after ${timeoutMs} ms`);
          }
          if (opts.json) print(opts, { acknowledged: true, outdated: 0 }, '');
          return 0;
        });
      }),
    );

  clientCommand(
    cmd,
    'bump',
    'set the generation to max(min, current + 1) (root or an --allow-uid of the service)',
    'print {"generation": N, "madeOutdated": K}',
  )
    .option('--min <n>', 'the least generation to move to', '0')
    .action(
      runAction(async (opts: ClientOptions & { min: string }) => {
        const min = parseIntIn(opts.min, '--min', 0, U32_MAX);
        const r = await withClient(opts.socket, (c) => c.bump(min));
        print(opts, r, String(r.generation));
        return 0;
      }),
    );
}
