/** Runs `sevtrack serve` as a real child process for integration tests. */
import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import { encodeFrame, type Frame, FrameDecoder, isFrame } from '../../src/common/frames.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { HOST_FRAME } from '../../src/host/service-protocol.js';
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
  const served = spawnServe(['--db', db, '--socket', socket, ...extra], as);
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const probe = await HostServiceClient.connect(socket);
      await probe.close();
      break;
    } catch {
      if (served.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`sevtrack serve did not come up: ${served.stderr()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return served;
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

/** A bare socket speaking frames, for tests that must control every byte and read replies one by one. */
export class RawConnection {
  private readonly decoder = new FrameDecoder(HOST_FRAME);
  private readonly frames: Frame[] = [];
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const item of this.decoder.push(chunk)) if (isFrame(item)) this.frames.push(item);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  static connect(path: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new RawConnection(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(type: number, id: number, payload: Uint8Array): void {
    this.socket.write(encodeFrame(HOST_FRAME, type, id, payload));
  }

  /** The next frame received, or undefined once the connection closed with none left. */
  async next(): Promise<Frame | undefined> {
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.closed) return undefined;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** The status of a reply frame (after ret). */
  static status(f: Frame): number {
    return f.payload.readUInt16LE(4);
  }
}
