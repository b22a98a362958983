/**
 * The sysgenid service: one GenerationRegistry served on a Unix socket, its
 * generation mirrored into the counter file. One connection is one watcher
 * (the kernel's open file); closing it, cleanly or mid-request, removes the
 * watcher.
 *
 * Failure rule (docs/sysgenid.md, "Bad input"): a client's bytes never stop
 * the service and never change anything but that client's answer. A frame
 * with a bad CRC or version gets EPROTO and the connection lives on; a bad
 * magic or an oversized length loses the framing, so the client gets one
 * EPROTO frame and is disconnected; an unknown request type gets ENOTTY, a
 * malformed payload EINVAL, an unprivileged bump EACCES.
 */
import net from 'node:net';
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { FormatError } from '../common/errors.js';
import { encodeFrame, type Frame, FrameDecoder, isFrame } from '../common/frames.js';
import { nativeAddon, type PeerCredentials } from '../common/native.js';
import { listenUnixSocket } from '../common/unix-socket.js';
import { CounterFile } from './counter-file.js';
import { Errno, errnoOf, sysgenidError } from './errors.js';
import {
  errorReply,
  MAX_NAME_BYTES,
  okReply,
  POLLIN,
  READ_NONBLOCK,
  REPLY_FLAG,
  REQUEST_FRAME,
  Request,
  TYPE_PROTOCOL_ERROR,
  writeWatcherTable,
} from './protocol.js';
import { GenerationRegistry, type Watcher } from './registry.js';

export interface SysgenidServiceOptions {
  socketPath: string;
  counterFile: string;
  /** A group name or gid: the socket becomes 0660 for that group (else 0600). */
  group?: string;
  /** Uids besides root allowed to bump. */
  allowUids?: readonly number[];
  /** Diagnostic lines (refusals, protocol errors). */
  log?: (line: string) => void;
}

/** The fd behind a server-side net.Socket (Node keeps it on the internal handle). */
function socketFd(socket: net.Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: number } })._handle;
  if (handle?.fd === undefined || handle.fd < 0) throw new Error('the connection has no file descriptor');
  return handle.fd;
}

export class SysgenidService {
  private readonly server: net.Server;
  private readonly registry: GenerationRegistry;
  private readonly sockets = new Set<net.Socket>();
  private readonly allowUids: ReadonlySet<number>;
  private readonly log: (line: string) => void;
  private stopping = false;

  private constructor(
    readonly socketPath: string,
    private readonly counter: CounterFile,
    options: SysgenidServiceOptions,
  ) {
    this.allowUids = new Set(options.allowUids ?? []);
    this.log = options.log ?? (() => {});
    this.registry = new GenerationRegistry(counter.generation, (g) => counter.store(g));
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Opens the counter file (resuming its generation), listens on the socket and returns the running service. */
  static async start(options: SysgenidServiceOptions): Promise<SysgenidService> {
    const counter = CounterFile.open(options.counterFile);
    const service = new SysgenidService(options.socketPath, counter, options);
    try {
      await listenUnixSocket(service.server, options.socketPath, options.group);
    } catch (err) {
      counter.close();
      throw err;
    }
    return service;
  }

  get generation(): number {
    return this.registry.generation;
  }

  get counterFile(): string {
    return this.counter.path;
  }

  /** Bumps from inside the service's process (the VMM's own path; no peer check). */
  bump(min = 0): { generation: number; madeOutdated: number } {
    return this.registry.bump(min);
  }

  /** Closes every connection and the socket; the counter file stays, holding the last generation. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
    this.counter.close();
  }

  private accept(socket: net.Socket): void {
    let peer: PeerCredentials;
    try {
      peer = nativeAddon().sysgenidPeerCredentials(socketFd(socket));
    } catch (err) {
      this.log(`refused a connection without peer credentials: ${(err as Error).message}`);
      socket.destroy();
      return;
    }
    if (this.stopping) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    const watcher = this.registry.open(peer.pid, peer.uid);
    const decoder = new FrameDecoder(REQUEST_FRAME);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (isFrame(item)) {
          this.handle(socket, watcher, item);
          continue;
        }
        this.log(`watcher ${watcher.id} (pid ${peer.pid}): ${item.message}`);
        if (item.fatal) {
          this.send(socket, TYPE_PROTOCOL_ERROR, 0, errorReply(Errno.EPROTO, item.message));
          socket.end();
        } else {
          this.send(socket, item.type | REPLY_FLAG, item.id, errorReply(Errno.EPROTO, item.message));
        }
      }
    });
    socket.on('error', (err) => this.log(`watcher ${watcher.id}: connection error: ${err.message}`));
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.registry.close(watcher);
    });
  }

  private send(socket: net.Socket, type: number, id: number, payload: Buffer): void {
    if (!socket.destroyed && socket.writable) socket.write(encodeFrame(REQUEST_FRAME, type, id, payload));
  }

  private handle(socket: net.Socket, w: Watcher, frame: Frame): void {
    const type = frame.type | REPLY_FLAG;
    const reply = (payload: Buffer) => this.send(socket, type, frame.id, payload);
    // A malformed payload (FormatError from the reader) is EINVAL like any bad argument.
    const fail = (err: unknown) => {
      const errno = errnoOf(err) ?? 'EINVAL';
      if (errnoOf(err) === undefined && !(err instanceof FormatError)) {
        this.log(`watcher ${w.id}: request type ${frame.type} failed: ${(err as Error).message}`);
      }
      reply(errorReply(Errno[errno as keyof typeof Errno] ?? Errno.EINVAL, (err as Error).message));
    };
    try {
      const payload = this.dispatch(w, frame, reply, fail);
      if (payload) reply(payload);
    } catch (err) {
      fail(err);
    }
  }

  /**
   * Runs one request. Returns the reply payload, or undefined for a blocking
   * read or a wait, which reply (or fail) later through the callbacks.
   */
  private dispatch(
    w: Watcher,
    frame: Frame,
    reply: (p: Buffer) => void,
    fail: (e: unknown) => void,
  ): Buffer | undefined {
    const body = new BinaryReader(frame.payload, 'sysgenid request');
    const r = this.registry;
    switch (frame.type) {
      case Request.GET:
        body.end();
        return okReply((out) => out.u32(r.generation));
      case Request.READ: {
        const flags = body.u8('read flags');
        body.end();
        r.read(w, (flags & READ_NONBLOCK) !== 0, (err, gen) =>
          err ? fail(err) : reply(okReply((out) => out.u32(gen ?? 0))),
        );
        return undefined;
      }
      case Request.WRITE:
        r.write(w, frame.payload);
        return okReply((out) => out.u32(frame.payload.length));
      case Request.POLL:
        body.end();
        return okReply((out) => out.u32(r.isOutdated(w) ? POLLIN : 0));
      case Request.SET_TRACKING: {
        const on = body.u8('tracking');
        body.end();
        if (on > 1) throw sysgenidError('EINVAL', `tracking must be 0 or 1, got ${on}`);
        r.setTracking(w, on === 1);
        return okReply();
      }
      case Request.GET_OUTDATED:
        body.end();
        return okReply((out) => out.u32(r.outdated));
      case Request.WAIT_WATCHERS: {
        const timeoutMs = body.u32('timeout ms');
        body.end();
        r.waitWatchers(w, timeoutMs, (err) => (err ? fail(err) : reply(okReply())));
        return undefined;
      }
      case Request.BUMP: {
        const min = body.u32('minimum generation');
        body.end();
        if (w.uid !== 0 && !this.allowUids.has(w.uid)) {
          this.log(`refused a bump from uid ${w.uid} (pid ${w.pid})`);
          throw sysgenidError(
            'EACCES',
            `bumping the generation needs root or an allowed uid; uid ${w.uid} is neither (start the service with --allow-uid ${w.uid})`,
          );
        }
        const { generation, madeOutdated } = r.bump(min);
        return okReply((out) => out.u32(generation).u32(madeOutdated));
      }
      case Request.SET_NAME: {
        if (frame.payload.length > MAX_NAME_BYTES) {
          throw sysgenidError(
            'EINVAL',
            `a watcher name is at most ${MAX_NAME_BYTES} bytes, got ${frame.payload.length}`,
          );
        }
        w.name = frame.payload.toString('utf8');
        return okReply();
      }
      case Request.LIST_WATCHERS: {
        body.end();
        const out = new BinaryWriter(64 + r.size * 32).i32(0);
        writeWatcherTable(out, r.generation, r.list());
        return out.finish();
      }
      default:
        throw sysgenidError('ENOTTY', `unknown sysgenid request type ${frame.type}`);
    }
  }
}
