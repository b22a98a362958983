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
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { InvalidArgumentError, MisuseError, PeerError } from '../common/errors.js';
import { FramedConnection, type FramedProtocol } from '../common/framed-connection.js';
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

/** Parses a reply: the body of a success, or the errno error it carries. */
function parseReply(payload: Buffer): BinaryReader {
  const body = new BinaryReader(payload, 'sysgenid reply');
  const status = body.i32('status');
  if (status === 0) return body;
  throw sysgenidError(errnoName(status), body.bytes(body.u32('message length'), 'message').toString('utf8'));
}

const SYSGENID_PROTOCOL: FramedProtocol = {
  spec: REPLY_FRAME,
  replyFlag: REPLY_FLAG,
  protocolErrorType: TYPE_PROTOCOL_ERROR,
  protocolError: (payload) => {
    try {
      parseReply(payload);
      return new PeerError('the sysgenid service reported a protocol error');
    } catch (err) {
      return err as Error;
    }
  },
};

export class SysgenidClient {
  private closing = false;
  private lastAcknowledged: number | undefined;

  private constructor(private readonly conn: FramedConnection) {}

  /** Connects a new watcher: up to date with the current generation, untracked. */
  static async connect(socketPath: string): Promise<SysgenidClient> {
    return new SysgenidClient(
      await FramedConnection.connect(socketPath, SYSGENID_PROTOCOL, 'sysgenid service'),
    );
  }

  /** Disconnects: the service forgets this watcher (and drops it from the outdated count). */
  close(): Promise<void> {
    this.closing = true;
    return this.conn.close();
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
    this.conn.writeRaw(bytes);
  }

  /** Sends a request of any type and payload (tests of bad input); resolves with the body or rejects with the errno. */
  rawRequest(type: number, payload: Uint8Array): Promise<BinaryReader> {
    return this.call(type, payload);
  }

  private async call(type: number, payload: Uint8Array): Promise<BinaryReader> {
    return parseReply(await this.conn.request(type, payload));
  }
}

function checkU32(field: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new InvalidArgumentError(field, `${field} ${v} must be an integer in [0, 4294967295]`);
  }
  return v;
}
