/**
 * The host service: serves a CbitStore over a Unix socket with the protocol
 * of service-protocol.ts (docs/host-protocol.md), so a VMM (or the guest
 * shim's socket transport) can forward MAP_GPA_RANGE hypercalls.
 *
 * Group commit (docs/design.md §6): hypercalls from every connection are
 * applied as they arrive and their replies held back; one commit per
 * event-loop turn makes the whole group durable, and only then are the
 * replies written (service-connection.ts).
 *
 * Memory: `maxMemory` bounds what the connections may hold beside the
 * tracked state: each connection's reply queue (reading paused above 1 MiB
 * queued; disconnected above max(maxMemory / 16, 32 MiB)) and the partial request frames of all connections
 * together (maxMemory / 4; past it the connection holding the most is
 * disconnected, status OVERLOADED).
 */
import net from 'node:net';
import { InvalidArgumentError } from '../common/errors.js';
import { listenUnixSocket, resolveGid } from '../common/unix-socket.js';
import type { CbitStore } from './cbit-store.js';
import { GroupCommit } from './group-commit.js';
import { Connection } from './service-connection.js';
import { Status } from './service-protocol.js';

/** sun_path holds 108 bytes on Linux, the terminating NUL included. */
export const MAX_SOCKET_PATH_BYTES = 107;
/** The default of `--max-memory`. */
export const DEFAULT_MAX_MEMORY = 1024 * 2 ** 20;
/** The default of `--drain-timeout`, in milliseconds. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 5000;
const REPLY_HIGH_WATER = 2 ** 20;
/** The largest single reply (QUERY_RANGES of 10^6 ranges, 24 MB) must fit a queue. */
const MIN_REPLY_LIMIT = 32 * 2 ** 20;

export interface HostServiceOptions {
  store: CbitStore;
  socketPath: string;
  /** A group name or gid: the socket becomes mode 0660 owned by that group (else 0600). */
  group?: string;
  /** Bytes the connections may hold (reply queues, partial frames); default DEFAULT_MAX_MEMORY. */
  maxMemory?: number;
  /** Diagnostic lines (connections, protocol errors). */
  log?: (line: string) => void;
}

/** Throws InvalidArgumentError when path does not fit sun_path (it would be truncated silently). */
export function checkSocketPath(path: string): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new InvalidArgumentError(
      '--socket',
      `socket path is ${bytes} bytes, longer than the ${MAX_SOCKET_PATH_BYTES} a Unix socket address holds (sun_path); choose a shorter --socket path`,
    );
  }
}

export class HostService {
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private readonly commits: GroupCommit;
  private stopping: Promise<void> | undefined;
  private readonly log: (line: string) => void;
  private readonly maxMemory: number;

  private constructor(
    private readonly store: CbitStore,
    readonly socketPath: string,
    maxMemory: number,
    log?: (line: string) => void,
  ) {
    this.log = log ?? (() => {});
    this.maxMemory = maxMemory;
    this.commits = new GroupCommit(store, (err) =>
      this.log(`commit failed, changes not applied: ${err.message}`),
    );
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Claims the socket path, listens (mode 0600, or 0660 with a group) and returns the running service. */
  static async start(options: HostServiceOptions): Promise<HostService> {
    const maxMemory = options.maxMemory ?? DEFAULT_MAX_MEMORY;
    if (!Number.isSafeInteger(maxMemory) || maxMemory < 64 * 2 ** 20) {
      throw new InvalidArgumentError('--max-memory', `max memory ${maxMemory} must be at least 64 MiB`);
    }
    checkSocketPath(options.socketPath);
    if (options.group !== undefined) resolveGid(options.group);
    const service = new HostService(options.store, options.socketPath, maxMemory, options.log);
    try {
      await listenUnixSocket(service.server, options.socketPath, options.group);
    } catch (err) {
      if (!service.server.listening || options.group === undefined) throw err;
      // Listening, but the socket could not be given to the group.
      await new Promise<void>((resolve) => service.server.close(() => resolve()));
      throw new InvalidArgumentError(
        '--group',
        `cannot give the socket to group ${options.group} (${(err as Error).message}); pass a group this user may use`,
      );
    }
    return service;
  }

  /** Number of open client connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Drains (docs/host-protocol.md "Shutdown"): stops accepting, commits and
   * answers every request already received, sends each client the
   * SHUTTING_DOWN notice, answers later requests SHUTTING_DOWN, closes each
   * connection once it is idle and quiet (service-connection.ts), and after
   * drainTimeoutMs closes whatever is left. The store stays open; its owner
   * closes it.
   */
  stop(drainTimeoutMs = DEFAULT_DRAIN_TIMEOUT_MS): Promise<void> {
    this.stopping ??= this.drain(drainTimeoutMs);
    return this.stopping;
  }

  private async drain(drainTimeoutMs: number): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.commits.flush();
    const draining = [...this.connections];
    for (const c of draining) c.startDrain();
    const timer = setTimeout(() => {
      for (const c of this.connections) {
        this.log('drain timeout: closing a connection that is still busy');
        c.socket.destroy();
      }
    }, drainTimeoutMs);
    await listenerClosed;
    clearTimeout(timer);
    for (const c of draining) c.abandonMigrations();
    this.commits.flush();
  }

  /** Ends a drained connection; a client that keeps its end open is cut once our data is out. */
  private endConnection(c: Connection): void {
    if (c.socket.writableEnded) return;
    c.socket.end(() => c.socket.destroy());
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const connection = new Connection(
      socket,
      this.store,
      this.commits,
      {
        replyHighWater: REPLY_HIGH_WATER,
        replyLimit: Math.max(Math.floor(this.maxMemory / 16), MIN_REPLY_LIMIT),
      },
      this.log,
      (c) => this.endConnection(c),
    );
    this.connections.add(connection);
    socket.on('data', () => this.boundPartialFrames());
    socket.on('error', (err) => this.log(`connection error: ${err.message}`));
    // Replies still held for a closed socket are dropped by Connection.send().
    socket.on('close', () => this.connections.delete(connection));
  }

  /** Keeps the partial frames of all connections within maxMemory / 4. */
  private boundPartialFrames(): void {
    let total = 0;
    let largest: Connection | undefined;
    for (const c of this.connections) {
      total += c.partialBytes;
      if (!largest || c.partialBytes > largest.partialBytes) largest = c;
    }
    const budget = Math.floor(this.maxMemory / 4);
    if (total > budget && largest) {
      this.log(
        `disconnecting a client holding a ${largest.partialBytes}-byte partial frame (budget ${budget})`,
      );
      largest.disconnect(
        Status.OVERLOADED,
        `partial frames of all clients exceed ${budget} bytes (--max-memory / 4); send frames whole and retry`,
      );
    }
  }
}
