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

export function registerSysgenid(program: Command): void {
  const cmd = program
    .command('sysgenid')
    .description(
      'system generation id: a counter that grows when a VM is restored, its watchers and overseer',
    );
  const socketOption = ['--socket <path>', 'the service socket', defaultSocketPath()] as const;

  cmd
    .command('serve')
    .description('run the sysgenid service until SIGTERM/SIGINT')
    .option(...socketOption)
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
          log?.(
            `listening on ${opts.socket} (counter file ${opts.counterFile}, generation ${service.generation})`,
          );
          await new Promise<void>((resolve) => {
            process.once('SIGTERM', resolve);
            process.once('SIGINT', resolve);
          });
          await service.stop();
          log?.('stopped');
          return 0;
        },
      ),
    );

  cmd
    .command('get')
    .description('print the current generation')
    .option(...socketOption)
    .option('--json', 'print {"generation": N}')
    .action(
      runAction(async (opts: ClientOptions) => {
        const generation = await withClient(opts.socket, (c) => c.get());
        print(opts, { generation }, String(generation));
        return 0;
      }),
    );

  cmd
    .command('watch')
    .description('print each new generation, optionally run a command for it, then acknowledge it')
    .option(...socketOption)
    .option('--track', 'be a tracked watcher: an overseer waits for this one to acknowledge')
    .option(
      '--exec <command>',
      'run this shell command per generation (SYSGENID_GENERATION set) before acknowledging',
    )
    .option('--count <n>', 'exit after this many generations (0 = run until SIGTERM/SIGINT)', '0')
    .option('--json', 'print one {"generation": N} line per generation')
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

  cmd
    .command('outdated')
    .description('print how many tracked watchers have not acknowledged the current generation')
    .option(...socketOption)
    .option('--json', 'print {"outdated": N}')
    .action(
      runAction(async (opts: ClientOptions) => {
        const outdated = await withClient(opts.socket, (c) => c.outdated());
        print(opts, { outdated }, String(outdated));
        return 0;
      }),
    );

  cmd
    .command('wait')
    .description('wait until every tracked watcher acknowledged the current generation')
    .option(...socketOption)
    .requiredOption('--timeout <ms>', 'give up after this many ms (0 = wait forever)')
    .option('--json', 'print {"acknowledged": bool, "outdated": N}')
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

  cmd
    .command('bump')
    .description('set the generation to max(min, current + 1) (root or an --allow-uid of the service)')
    .option(...socketOption)
    .option('--min <n>', 'the least generation to move to', '0')
    .option('--json', 'print {"generation": N, "madeOutdated": K}')
    .action(
      runAction(async (opts: ClientOptions & { min: string }) => {
        const min = parseIntIn(opts.min, '--min', 0, U32_MAX);
        const r = await withClient(opts.socket, (c) => c.bump(min));
        print(opts, r, String(r.generation));
        return 0;
      }),
    );
}
