/**
 * Where a two-process migration connects: `HOST:PORT` for tcp, a filesystem
 * path for a unix socket. Opens the channel either way.
 *
 * A listening destination waits for the source, not for the first
 * connection: connections that turn out not to be a migration source
 * (strays: closed before sending a frame, or bytes that do not start with
 * the stream's magic) are dropped while it keeps listening. The first
 * connection whose first frame arrives is the source; listening stops then.
 * A connection that stays open without sending its first frame for the
 * handshake timeout, or one that sent the stream's magic and then broke,
 * aborts the destination (a source that cannot complete its handshake).
 *
 * Errors: a failure of this machine's socket (an address in use, a path
 * that cannot be bound) is a local error, never a PeerError.
 */
import net from 'node:net';
import { InvalidArgumentError, MisuseError, PeerError, RuntimeFailure } from '../common/errors.js';
import type { Frame } from '../common/frames.js';
import { claimSocketPath, MAX_UNIX_PATH_BYTES } from '../common/unix-socket.js';
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
    if (Buffer.byteLength(text) > MAX_UNIX_PATH_BYTES)
      throw new InvalidArgumentError(
        flag,
        `${flag} ${text} is ${Buffer.byteLength(text)} bytes long; a unix socket path has at most ${MAX_UNIX_PATH_BYTES}: choose a shorter path`,
      );
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

/** errno codes of a connect that mean the destination is not there (or went away): peer errors. */
const PEER_CONNECT_ERRORS = new Set([
  'ECONNREFUSED',
  'ENOENT',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'EPIPE',
]);

/**
 * Connects to a listening destination. A destination that is not there is a
 * PeerError; a failure of this machine's socket is a local RuntimeFailure.
 */
export function connectChannel(e: Endpoint, peerTimeoutMs: number): Promise<FrameChannel> {
  return new Promise((resolve, reject) => {
    const socket = e.kind === 'tcp' ? net.connect(e.port, e.host) : net.connect(e.path);
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      resolve(new SocketChannel(socket, MIGRATION_FRAME, peerTimeoutMs));
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const message = `cannot connect to the destination at ${describeEndpoint(e)}: ${err.message}`;
      reject(
        PEER_CONNECT_ERRORS.has(err.code ?? '')
          ? new PeerError(message, { cause: err })
          : new RuntimeFailure('ERR_LOCAL_SOCKET', message, { cause: err }),
      );
    });
  });
}

/** Turns an error of listen() into a local error naming the flag and the fix. */
export function listenError(err: NodeJS.ErrnoException, e: Endpoint, flag: string): Error {
  const where = describeEndpoint(e);
  switch (err.code) {
    case 'EADDRINUSE':
      return new MisuseError(
        'ERR_SOCKET_IN_USE',
        `${where} is already in use on this machine; stop what listens there or choose another ${flag} address`,
      );
    case 'EACCES':
    case 'EPERM':
      return new InvalidArgumentError(
        flag,
        e.kind === 'tcp'
          ? `${flag} ${where}: permission denied; ports below 1024 need privileges, choose another port`
          : `${flag} ${where}: permission denied; the directory must exist and be writable, choose another path`,
      );
    case 'EADDRNOTAVAIL':
      return new InvalidArgumentError(
        flag,
        `${flag} ${where}: ${e.kind === 'tcp' ? e.host : where} is not an address of this machine; use one of its addresses (e.g. 127.0.0.1 or 0.0.0.0)`,
      );
    case 'ENOENT':
    case 'ENOTDIR':
      return new InvalidArgumentError(
        flag,
        `${flag} ${where}: the directory does not exist; create it or choose another path`,
      );
    default:
      return new RuntimeFailure('ERR_LOCAL_SOCKET', `cannot listen on ${where}: ${err.message}`, {
        cause: err,
      });
  }
}

export interface ListenOptions {
  /** Applied to every frame after the first (and to sends): --peer-timeout. */
  peerTimeoutMs: number;
  /** How long a connection may stay open without sending its first frame: --handshake-timeout (0 = no limit). */
  handshakeTimeoutMs: number;
  /** The flag errors name (default --listen). */
  flag?: string;
  /** Told the reason for every stray connection dropped while waiting for the source. */
  onStray?: (reason: string) => void;
}

export interface Listener {
  /** The bound address (with the real port when 0 was asked). */
  endpoint: Endpoint;
  /**
   * The source's connection, its first frame not yet read. Rejects with
   * PeerError when a connection holds its handshake past the timeout (or
   * breaks it after sending the stream's magic) before a source spoke.
   */
  accept(): Promise<FrameChannel>;
  /** Stops listening (removing a unix socket file) and drops every connection not handed out by accept(). */
  close(): void;
}

const MAGIC = Buffer.alloc(4);
MAGIC.writeUInt32LE(MIGRATION_FRAME.magic);

/** Listens for one source (claiming a unix socket path first: a stale socket is replaced, a live one refused). */
export async function listenChannel(e: Endpoint, o: ListenOptions): Promise<Listener> {
  const flag = o.flag ?? '--listen';
  if (e.kind === 'unix') await claimSocketPath(e.path, flag);
  const candidates = new Set<net.Socket>();
  let settle: { resolve: (c: FrameChannel) => void; reject: (e: Error) => void } | undefined;
  let settled = false;
  const source = new Promise<FrameChannel>((resolve, reject) => {
    settle = { resolve, reject };
  });
  source.catch(() => {}); // a caller that never calls accept() must not see an unhandled rejection
  const server = net.createServer();
  let closed = false;
  const dropAll = () => {
    for (const s of candidates) s.destroy();
    candidates.clear();
  };
  const finish = (outcome: FrameChannel | Error) => {
    if (settled) return;
    settled = true;
    server.close(); // one migration per listener: later connections are refused
    dropAll();
    if (outcome instanceof Error) settle!.reject(outcome);
    else settle!.resolve(outcome);
  };

  server.on('connection', (socket) => {
    if (settled) {
      socket.destroy();
      return;
    }
    candidates.add(socket);
    const peer = e.kind === 'tcp' ? `${socket.remoteAddress}:${socket.remotePort}` : `a process on ${e.path}`;
    // The magic is checked as soon as 4 bytes are in, so a stray that sends a
    // short line and waits is dropped at once rather than at the timeout.
    let head = Buffer.alloc(0);
    let spokeStream = false;
    const checkMagic = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < 4) return;
      socket.off('data', checkMagic);
      if (head.subarray(0, 4).equals(MAGIC)) spokeStream = true;
      else stray(`sent 0x${head.subarray(0, 4).toString('hex')}, not the migration stream's magic "SVMG"`);
    };
    socket.on('data', checkMagic);
    const channel = new SocketChannel(socket, MIGRATION_FRAME, o.peerTimeoutMs);
    let done = false;
    const stray = (reason: string) => {
      if (done) return;
      done = true;
      candidates.delete(socket);
      socket.destroy();
      if (!settled) o.onStray?.(`dropped a connection from ${peer}: ${reason}`);
    };
    const timedOut = new PeerError(
      `a peer (${peer}) connected but sent no handshake within ${o.handshakeTimeoutMs} ms (--handshake-timeout); no migration source spoke`,
    );
    channel
      .next(o.handshakeTimeoutMs, () => timedOut)
      .then(
        (first) => {
          if (done) return;
          done = true;
          candidates.delete(socket);
          socket.off('data', checkMagic);
          if (settled) socket.destroy();
          else finish(withFirstFrame(channel, first));
        },
        (err: Error) => {
          if (done) return;
          if (err === timedOut || spokeStream) {
            done = true;
            candidates.delete(socket);
            socket.destroy();
            finish(
              err === timedOut
                ? err
                : new PeerError(`the source (${peer}) broke its handshake: ${err.message}`),
            );
          } else {
            stray(err.message.replace(/^bad frame from the peer: /, ''));
          }
        },
      );
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, e, flag)));
    const onListening = () => {
      server.removeAllListeners('error');
      // After listening: an accept failure (e.g. out of file descriptors) ends the wait, as a local error.
      server.on('error', (err) =>
        finish(
          new RuntimeFailure(
            'ERR_LOCAL_SOCKET',
            `listening on ${describeEndpoint(e)} failed: ${err.message}`,
          ),
        ),
      );
      resolve();
    };
    if (e.kind === 'tcp') server.listen(e.port, e.host, onListening);
    else server.listen(e.path, onListening);
  });
  const addr = server.address();
  const endpoint: Endpoint =
    typeof addr === 'object' && addr ? { kind: 'tcp', host: addr.address, port: addr.port } : e;
  return {
    endpoint,
    accept: () => source,
    close: () => {
      if (closed) return;
      closed = true;
      finish(new RuntimeFailure('ERR_CLOSED', 'the destination stopped listening before a source connected'));
      server.close(); // Node unlinks a unix socket file when its server closes
      dropAll();
    },
  };
}

/** The channel with `first` put back in front: the destination reads the handshake itself. */
function withFirstFrame(channel: FrameChannel, first: Frame): FrameChannel {
  let pending: Frame | undefined = first;
  return {
    send: (type, payload) => channel.send(type, payload),
    sendLent: (type, buffer, length) => channel.sendLent(type, buffer, length),
    next: (timeoutMs, timeoutError) => {
      const f = pending;
      pending = undefined;
      return f ? Promise.resolve(f) : channel.next(timeoutMs, timeoutError);
    },
    // A handshake that had arrived is still handed out, as by any channel.
    stopReceiving: (reason) => channel.stopReceiving(reason),
    close: () => channel.close(),
  };
}
