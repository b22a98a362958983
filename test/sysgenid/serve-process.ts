/** Runs `sevtrack sysgenid serve` as a child process for the sysgenid tests. */
import { join } from 'node:path';
import { type RunningCli, startCli, waitForStderr } from '../support/cli.js';

export interface SysgenidServe {
  cli: RunningCli;
  socket: string;
  counterFile: string;
  stop(): Promise<number | null>;
}

/** Starts the service in dir and resolves once it listens. */
export async function startSysgenidServe(dir: string, extra: string[] = []): Promise<SysgenidServe> {
  const socket = join(dir, 'sysgenid.sock');
  const counterFile = join(dir, 'sysgenid');
  const cli = startCli(['sysgenid', 'serve', '--socket', socket, '--counter-file', counterFile, ...extra]);
  await waitForStderr(cli, /listening on/);
  return {
    cli,
    socket,
    counterFile,
    stop: async () => {
      cli.child.kill('SIGTERM');
      return cli.exit;
    },
  };
}

/** Resolves once `read()` of the text so far matches pattern (polling the captured output of a child). */
export async function waitForOutput(
  read: () => string,
  pattern: RegExp,
  timeoutMs = 30_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = pattern.exec(read());
    if (m) return m[0];
    if (Date.now() > deadline) throw new Error(`never printed ${pattern}: ${read()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
