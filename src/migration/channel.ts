/**
 * A framed, ordered, bidirectional channel between migration source and
 * destination: over a socket (unix or tcp) or in memory (both ends in one
 * process, the default run). Frames are those of src/common/frames.ts with
 * the migration stream's magic (docs/migration-stream.md).
 */
import type net from 'node:net';
import { PeerError } from '../common/errors.js';
import { encodeFrame, type Frame, FrameDecoder, type FrameSpec, isFrame } from '../common/frames.js';

export interface FrameChannel {
  /** Sends a frame; resolves once the transport accepted it (backpressure). */
  send(type: number, payload: Uint8Array): Promise<void>;
  /**
   * The next frame; rejects with PeerError when the peer is gone or sent a bad
   * frame, or when nothing arrives within timeoutMs (with `timeoutError()` if
   * given, else an error naming --peer-timeout).
   */
  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame>;
  close(): void;
}

/** Queues frames for next(), and fails every waiter once the channel is dead. */
export class Inbox {
  private frames: Frame[] = [];
  private waiters: { resolve: (f: Frame) => void; reject: (e: Error) => void }[] = [];
  private dead: Error | undefined;

  push(f: Frame): void {
    const w = this.waiters.shift();
    if (w) w.resolve(f);
    else this.frames.push(f);
  }

  fail(e: Error): void {
    this.dead ??= e;
    for (const w of this.waiters.splice(0)) w.reject(this.dead);
  }

  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject };
      this.waiters.push(entry);
      if (timeoutMs !== undefined && timeoutMs > 0) {
        const timer = setTimeout(() => {
          const i = this.waiters.indexOf(entry);
          if (i >= 0) {
            this.waiters.splice(i, 1);
            reject(
              timeoutError?.() ??
                new PeerError(
                  `the peer sent nothing for ${timeoutMs} ms (--peer-timeout); the link or the peer is down`,
                ),
            );
          }
        }, timeoutMs);
        const clear = () => clearTimeout(timer);
        entry.resolve = (fr) => {
          clear();
          resolve(fr);
        };
        entry.reject = (e) => {
          clear();
          reject(e);
        };
      }
    });
  }
}

export class SocketChannel implements FrameChannel {
  private readonly inbox = new Inbox();

  /** sendTimeoutMs: how long a write may wait for the peer to drain it before the peer counts as gone. */
  constructor(
    private readonly socket: net.Socket,
    private readonly spec: FrameSpec,
    private readonly sendTimeoutMs = 30_000,
  ) {
    const decoder = new FrameDecoder(spec);
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (isFrame(item)) this.inbox.push(item);
        else {
          this.inbox.fail(new PeerError(`bad frame from the peer: ${item.message}`));
          socket.destroy();
        }
      }
    });
    socket.on('error', (e) =>
      this.inbox.fail(new PeerError(`connection to the peer failed: ${e.message}`, { cause: e })),
    );
    socket.on('close', () => this.inbox.fail(new PeerError('the peer closed the connection')));
  }

  send(type: number, payload: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed) {
        reject(new PeerError('the connection to the peer is closed'));
        return;
      }
      const ok = this.socket.write(encodeFrame(this.spec, type, 0, payload), (err) => {
        if (err) reject(new PeerError(`sending to the peer failed: ${err.message}`, { cause: err }));
        else if (ok) resolve();
      });
      if (!ok) {
        const timer = setTimeout(() => {
          reject(
            new PeerError(
              `the peer took no data for ${this.sendTimeoutMs} ms (--peer-timeout); the link or the peer is down`,
            ),
          );
          this.socket.destroy();
        }, this.sendTimeoutMs);
        this.socket.once('drain', () => {
          clearTimeout(timer);
          resolve();
        });
      }
    });
  }

  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame> {
    return this.inbox.next(timeoutMs, timeoutError);
  }

  /** Ends the connection; a peer that does not finish closing within 2 s (link down) is cut off. */
  close(): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), 2000);
    this.socket.once('close', () => clearTimeout(timer));
  }
}

/**
 * Two connected in-memory channel ends, for source and destination in one
 * process. Frames are handed over as objects: no encoding, copy or CRC, which
 * only the byte transports need (their framing is tested there).
 */
export function memoryChannelPair(spec: FrameSpec): [FrameChannel, FrameChannel] {
  const a = new Inbox();
  const b = new Inbox();
  const end = (mine: Inbox, peer: Inbox): FrameChannel => {
    let closed = false;
    return {
      async send(type, payload) {
        if (closed) throw new PeerError('the channel is closed');
        if (payload.length > spec.maxPayload) {
          throw new PeerError(
            `${spec.what}: payload of ${payload.length} bytes exceeds the maximum ${spec.maxPayload}`,
          );
        }
        peer.push({
          version: spec.version,
          type,
          id: 0,
          payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
        });
        // Yield so the peer runs: the in-memory pipe has the backpressure of one frame.
        await new Promise((r) => setImmediate(r));
      },
      next: (t, e) => mine.next(t, e),
      close() {
        closed = true;
        peer.fail(new PeerError('the peer closed the connection'));
      },
    };
  };
  return [end(a, b), end(b, a)];
}
