/** Runs `sevtrack serve` as a real child process for integration tests. */
import { type ChildProcess, spawn } from 'node:child_process';
import { HostServiceClient } from '../../src/host/service-client.js';
import { CLI_MAIN, ROOT, tsNodeArgs } from './cli.js';

export interface ServeProcess {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Who the child runs as: an unprivileged uid where the tests run as root, so file modes bind. */
export interface SpawnAs {
  uid?: number;
  gid?: number;
}

/** uid/gid 65534 (nobody) when running as root, else this user: permission checks then apply. */
export const UNPRIVILEGED: SpawnAs = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};

/** Spawns `sevtrack serve` with these arguments (no readiness wait). */
export function spawnServe(args: string[], as: SpawnAs = {}): ServeProcess {
  const child = spawn(process.execPath, tsNodeArgs(CLI_MAIN, ['serve', ...args]), {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...as,
  });
  let err = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, stderr: () => err, exited };
}

/** Starts the service and resolves once a client can connect. */
export async function startServe(
  db: string,
  socket: string,
  extra: string[] = [],
  as: SpawnAs = {},
): Promise<ServeProcess> {
  const child = spawn(
    process.execPath,
    tsNodeArgs(CLI_MAIN, ['serve', '--db', db, '--socket', socket, ...extra]),
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...as,
    },
  );
  let err = '';
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const probe = await HostServiceClient.connect(socket);
      await probe.close();
      break;
    } catch {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`sevtrack serve did not come up: ${err}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { child, stderr: () => err, exited };
}

/** Runs fn with a client of a fresh `sevtrack serve`, then stops the service (SIGTERM) whatever happens. */
export async function withServe<T>(
  db: string,
  socket: string,
  fn: (client: HostServiceClient) => Promise<T>,
): Promise<T> {
  const serve = await startServe(db, socket, ['--quiet']);
  const client = await HostServiceClient.connect(socket);
  try {
    return await fn(client);
  } finally {
    await client.close();
    serve.child.kill('SIGTERM');
    await serve.exited;
  }
}
