/**
 * A client of the sysgenid service: one connection is one watcher, exactly
 * as one open /dev/sysgenid file was in the kernel proposal. Requests are
 * pipelined and answered by id, so a blocking read can be pending while the
 * same watcher asks for other things.
 *
 * The usual watcher loop (docs/sysgenid.md, "Watching"):
 *
 *   const c = await SysgenidClient.connect(path);
 *   await c.setTracking(true);
 *   for await (const generation of c.generations()) {
 *     reseed();                       // rebuild whatever must not survive a clone
 *     await c.acknowledge(generation);
 *   }
 */
import net from 'node:net';
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { InvalidArgumentError, MisuseError, PeerError } from '../common/errors.js';
import { encodeFrame, FrameDecoder, isFrame } from '../common/frames.js';
import { errnoName, sysgenidError } from './errors.js';
import {
  MAX_NAME_BYTES,
  POLLIN,
  READ_NONBLOCK,
  REPLY_FLAG,
  REPLY_FRAME,
  Request,
  readWatcherTable,
  TYPE_PROTOCOL_ERROR,
  type WatcherInfo,
} from './protocol.js';

interface Waiting {
  resolve: (body: BinaryReader) => void;
  reject: (err: Error) => void;
}

export class SysgenidClient {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private closedError: Error | undefined;
  private closing = false;
  private lastAcknowledged: number | undefined;

  private constructor(private readonly socket: net.Socket) {
    const decoder = new FrameDecoder(REPLY_FRAME);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (!isFrame(item)) {
          this.failAll(new PeerError(`sysgenid service sent a bad frame: ${item.message}`));
          socket.destroy();
          return;
        }
        this.dispatch(item.type, item.id, item.payload);
      }
    });
    socket.on('error', (err) =>
      this.failAll(new PeerError(`sysgenid connection failed: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => this.failAll(new PeerError('the sysgenid service closed the connection')));
  }

  /** Connects a new watcher: up to date with the current generation, untracked. */
  static connect(socketPath: string): Promise<SysgenidClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new SysgenidClient(socket));
      });
      socket.once('error', (err) =>
        reject(
          new PeerError(`cannot connect to the sysgenid service at ${socketPath}: ${err.message}`, {
            cause: err,
          }),
        ),
      );
    });
  }

  /** Disconnects: the service forgets this watcher (and drops it from the outdated count). */
  close(): Promise<void> {
    this.closing = true;
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  /** The current generation, without acknowledging anything. */
  async get(): Promise<number> {
    return (await this.call(Request.GET, new Uint8Array(0))).u32('generation');
  }

  /**
   * The generation, once this watcher is outdated: blocks while it is up to
   * date, or fails EAGAIN with nonBlocking. Never acknowledges: until
   * acknowledge(), every read returns at once with the current generation.
   */
  async read(options: { nonBlocking?: boolean } = {}): Promise<number> {
    const flags = options.nonBlocking ? READ_NONBLOCK : 0;
    return (await this.call(Request.READ, Uint8Array.of(flags))).u32('generation');
  }

  /** Acknowledges `generation`, which must be the current one (EINVAL otherwise). */
  async acknowledge(generation: number): Promise<void> {
    await this.write(new BinaryWriter(4).u32(generation).finish());
    this.lastAcknowledged = generation;
  }

  /** The raw write of the kernel interface: exactly 4 bytes (ENOBUFS otherwise) holding the current value. */
  async write(bytes: Uint8Array): Promise<number> {
    return (await this.call(Request.WRITE, bytes)).u32('bytes written');
  }

  /** True while this watcher is outdated (the kernel's EPOLLIN). */
  async readable(): Promise<boolean> {
    return ((await this.call(Request.POLL, new Uint8Array(0))).u32('events') & POLLIN) !== 0;
  }

  /** Opts this watcher in to (or out of) the outdated count an overseer waits on. */
  async setTracking(tracked: boolean): Promise<void> {
    await this.call(Request.SET_TRACKING, Uint8Array.of(tracked ? 1 : 0));
  }

  /** The number of tracked watchers that have not acknowledged the current generation. */
  async outdated(): Promise<number> {
    return (await this.call(Request.GET_OUTDATED, new Uint8Array(0))).u32('outdated');
  }

  /**
   * Resolves when no tracked watcher is outdated. Fails ETIME after
   * timeoutMs (0 = wait forever), EINTR when this watcher is or becomes
   * outdated (acknowledge, then wait again).
   */
  async waitWatchers(timeoutMs: number): Promise<void> {
    await this.call(
      Request.WAIT_WATCHERS,
      new BinaryWriter(4).u32(checkU32('timeoutMs', timeoutMs)).finish(),
    );
  }

  /**
   * Sets the generation to max(min, current + 1) and marks every watcher
   * outdated; needs root or an allowed uid (EACCES). Returns the new
   * generation and how many tracked watchers it made outdated.
   */
  async bump(min = 0): Promise<{ generation: number; madeOutdated: number }> {
    const body = await this.call(Request.BUMP, new BinaryWriter(4).u32(checkU32('min', min)).finish());
    return { generation: body.u32('generation'), madeOutdated: body.u32('made outdated') };
  }

  /** Labels this watcher in the service's watcher table (at most 64 bytes of UTF-8). */
  async setName(name: string): Promise<void> {
    const bytes = Buffer.from(name, 'utf8');
    if (bytes.length > MAX_NAME_BYTES) {
      throw new InvalidArgumentError(
        'name',
        `name "${name}" is ${bytes.length} bytes; a watcher name is at most ${MAX_NAME_BYTES}`,
      );
    }
    await this.call(Request.SET_NAME, bytes);
  }

  /** Every watcher the service knows, with the generation it is up to date with. */
  async listWatchers(): Promise<{ generation: number; watchers: WatcherInfo[] }> {
    return readWatcherTable(await this.call(Request.LIST_WATCHERS, new Uint8Array(0)));
  }

  /**
   * Each new generation once: blocks until this watcher is outdated, yields
   * the generation. The caller acknowledges it (acknowledge()) before pulling
   * the next one; pulling without acknowledging is a misuse, because the
   * read would return the same generation again. Ends quietly when close()
   * is called.
   */
  async *generations(): AsyncGenerator<number, void, undefined> {
    let last: number | undefined;
    for (;;) {
      let generation: number;
      try {
        generation = await this.read();
      } catch (err) {
        if (this.closing) return;
        throw err;
      }
      if (generation === last && this.lastAcknowledged !== generation) {
        throw new MisuseError(
          'ERR_SYSGENID_NOT_ACKNOWLEDGED',
          `generation ${generation} was yielded but not acknowledged; call acknowledge(${generation}) before asking for the next generation`,
        );
      }
      last = generation;
      yield generation;
    }
  }

  /** Sends raw bytes on the connection (tests of malformed input). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Sends a request of any type and payload (tests of bad input); resolves with the body or rejects with the errno. */
  rawRequest(type: number, payload: Uint8Array): Promise<BinaryReader> {
    return this.call(type, payload);
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  private dispatch(type: number, id: number, payload: Buffer): void {
    const body = new BinaryReader(payload, 'sysgenid reply');
    const status = body.i32('status');
    const message = status === 0 ? '' : body.bytes(body.u32('message length'), 'message').toString('utf8');
    if (type === TYPE_PROTOCOL_ERROR) {
      this.failAll(sysgenidError(errnoName(status), message));
      return;
    }
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if ((type & REPLY_FLAG) === 0) w.reject(new PeerError(`reply ${id} has request type ${type}`));
    else if (status !== 0) w.reject(sysgenidError(errnoName(status), message));
    else w.resolve(body);
  }

  private call(type: number, payload: Uint8Array): Promise<BinaryReader> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.socket.write(encodeFrame(REPLY_FRAME, type, id, payload));
    });
  }
}

function checkU32(field: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new InvalidArgumentError(field, `${field} ${v} must be an integer in [0, 4294967295]`);
  }
  return v;
}
