/**
 * Where a two-process migration connects: `HOST:PORT` for tcp, a filesystem
 * path for a unix socket. Opens the channel either way.
 */
import { rmSync } from 'node:fs';
import net from 'node:net';
import { InvalidArgumentError, PeerError } from '../common/errors.js';
import { type FrameChannel, SocketChannel } from './channel.js';
import { MIGRATION_FRAME } from './stream.js';

export type Transport = 'inproc' | 'unix' | 'tcp';

export type Endpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function parseEndpoint(text: string, transport: Transport, flag: string): Endpoint {
  if (transport === 'tcp') {
    const m = /^(.*):(\d+)$/.exec(text);
    const port = m ? Number(m[2]) : Number.NaN;
    if (!m || port > 65535)
      throw new InvalidArgumentError(
        flag,
        `${flag} "${text}" must be HOST:PORT for --transport tcp (e.g. 127.0.0.1:7000)`,
      );
    return { kind: 'tcp', host: m[1] || '127.0.0.1', port };
  }
  if (transport === 'unix') {
    if (text.length === 0)
      throw new InvalidArgumentError(flag, `${flag} must be a socket path for --transport unix`);
    return { kind: 'unix', path: text };
  }
  throw new InvalidArgumentError(
    '--transport',
    `${flag} needs --transport unix or tcp (inproc runs both ends in one process)`,
  );
}

export function describeEndpoint(e: Endpoint): string {
  return e.kind === 'tcp' ? `${e.host}:${e.port}` : e.path;
}

/** Connects to a listening destination. */
export function connectChannel(e: Endpoint, peerTimeoutMs: number): Promise<FrameChannel> {
  return new Promise((resolve, reject) => {
    const socket = e.kind === 'tcp' ? net.connect(e.port, e.host) : net.connect(e.path);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(new SocketChannel(socket, MIGRATION_FRAME, peerTimeoutMs));
    });
    socket.once('error', (err) =>
      reject(
        new PeerError(`cannot connect to the destination at ${describeEndpoint(e)}: ${err.message}`, {
          cause: err,
        }),
      ),
    );
  });
}

export interface Listener {
  /** The bound address (with the real port when 0 was asked). */
  endpoint: Endpoint;
  /** The first connection, as a channel. */
  accept(): Promise<FrameChannel>;
  close(): void;
}

/** Listens for one source. */
export function listenChannel(e: Endpoint, peerTimeoutMs: number): Promise<Listener> {
  return new Promise((resolve, reject) => {
    let pending: ((c: FrameChannel) => void) | undefined;
    let first: FrameChannel | undefined;
    const server = net.createServer((socket) => {
      const ch = new SocketChannel(socket, MIGRATION_FRAME, peerTimeoutMs);
      server.close(); // one migration per listener
      if (pending) pending(ch);
      else first = ch;
    });
    server.once('error', (err) =>
      reject(new PeerError(`cannot listen on ${describeEndpoint(e)}: ${err.message}`, { cause: err })),
    );
    const onListening = () => {
      const addr = server.address();
      const endpoint: Endpoint =
        typeof addr === 'object' && addr ? { kind: 'tcp', host: addr.address, port: addr.port } : e;
      resolve({
        endpoint,
        accept: () => (first ? Promise.resolve(first) : new Promise((r) => (pending = r))),
        close: () => {
          server.close();
          if (e.kind === 'unix') rmSync(e.path, { force: true });
        },
      });
    };
    if (e.kind === 'tcp') server.listen(e.port, e.host, onListening);
    else server.listen(e.path, onListening);
  });
}
