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
  /**
   * Sends a frame; resolves once the transport accepted it (backpressure:
   * every channel holds a bounded number of frames the peer has not taken).
   */
  send(type: number, payload: Uint8Array): Promise<void>;
  /**
   * Sends the frame in `buffer[0, length)` and lends the buffer: resolves
   * with a buffer of the same memory to build the next frame in, once the
   * peer has consumed this one (in-process channels) or the transport has
   * copied it (sockets). The sender never allocates, zeroes or faults a
   * page frame twice. The receiver of a lent frame may use its payload only
   * until its next call of next().
   */
  sendLent(type: number, buffer: Uint8Array, length: number): Promise<Uint8Array>;
  /**
   * The next frame; rejects with PeerError when the peer is gone or sent a bad
   * frame, or when nothing arrives within timeoutMs (with `timeoutError()` if
   * given, else an error naming --peer-timeout). Calling it again releases
   * the frame it returned before (its credit, and its buffer when lent).
   */
  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame>;
  /**
   * Stops taking frames: a pending next() rejects with `reason`, and so does
   * every later one once the frames that had already arrived are taken
   * (frames arriving after it are dropped). Sends still go out, so a side
   * that gives up can still tell its peer why (ABORT) before it closes.
   */
  stopReceiving(reason: Error): void;
  close(): void;
}

/** Frames a sender may have in flight (sent, not yet taken by the peer's next()) on in-process channels. */
export const CHANNEL_WINDOW = 8;

/**
 * A bounded window of frames in flight: acquire() waits, in FIFO order (so
 * frames keep their order), while `window` frames are unreleased; fail()
 * rejects every waiter and every later acquire.
 */
export class Credits {
  private inFlight = 0;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private dead: Error | undefined;
  /** Waits (a lent buffer's) that end when the channel dies; each removes itself when it ends otherwise. */
  private readonly failWatchers = new Set<(e: Error) => void>();

  constructor(private readonly window = CHANNEL_WINDOW) {}

  /**
   * Calls `onFail` with the first error if the channel dies (at once if it
   * is dead); returns the function that stops watching, for a wait that
   * ended otherwise. Unlike a race against one shared failure promise, a
   * finished wait leaves nothing behind.
   */
  watch(onFail: (e: Error) => void): () => void {
    if (this.dead) {
      onFail(this.dead);
      return () => {};
    }
    this.failWatchers.add(onFail);
    return () => this.failWatchers.delete(onFail);
  }

  acquire(): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.tryAcquire()) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** The error the channel died of (undefined while it lives). */
  get failure(): Error | undefined {
    return this.dead;
  }

  /** Takes a credit if one is free now (and nobody waits before this caller); false otherwise, or once failed. */
  tryAcquire(): boolean {
    if (this.dead || this.inFlight >= this.window || this.waiters.length > 0) return false;
    this.inFlight++;
    return true;
  }

  release(): void {
    const w = this.waiters.shift();
    if (w)
      w.resolve(); // the credit passes straight to the next waiter
    else this.inFlight = Math.max(0, this.inFlight - 1);
  }

  fail(e: Error): void {
    this.dead ??= e;
    for (const w of this.waiters.splice(0)) w.reject(this.dead);
    for (const watcher of [...this.failWatchers]) watcher(this.dead);
    this.failWatchers.clear();
  }
}

/** The longest delay setTimeout honours. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A next() waiting for a frame, with the time it gives up (Infinity: never). */
interface Waiter {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  deadline: number;
  timeoutError: () => Error;
}

/**
 * Queues frames for next(), and fails every waiter once the channel is dead.
 *
 * Timeouts: one watchdog timer serves every waiter, armed for the earliest
 * deadline and left alone when a frame comes in time (it then finds nothing
 * due and goes back to sleep). A timer armed and cleared per wait was a
 * measurable share of a receiver that waits between most frames (the
 * destination of a one-process migration: ~19 ms of its thread per GiB).
 */
export class Inbox {
  private frames: Frame[] = [];
  private releases = new Map<Frame, () => void>();
  private waiters: Waiter[] = [];
  private dead: Error | undefined;
  /** Releases the frame next() returned last, if it has a release. */
  private handedOut: Frame | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  /** When the watchdog fires (Infinity when it is not armed). */
  private watchdogAt = Number.POSITIVE_INFINITY;

  /**
   * Queues a frame; `release` runs when the receiver calls next() after
   * taking it. A failed inbox takes nothing more (what it queued before
   * stays readable): the frame is released at once, unread.
   */
  push(f: Frame, release?: () => void): void {
    if (this.dead) {
      release?.();
      return;
    }
    if (release) this.releases.set(f, release);
    const w = this.waiters.shift();
    if (w) {
      this.idleWatchdog();
      w.resolve(f);
    } else this.frames.push(f);
  }

  private hand(f: Frame): Frame {
    this.handedOut = f;
    return f;
  }

  fail(e: Error): void {
    this.dead ??= e;
    clearTimeout(this.watchdog);
    this.watchdog = undefined;
    this.watchdogAt = Number.POSITIVE_INFINITY;
    for (const w of this.waiters.splice(0)) w.reject(this.dead);
  }

  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame> {
    if (this.handedOut) {
      const release = this.releases.get(this.handedOut);
      this.releases.delete(this.handedOut);
      this.handedOut = undefined;
      release?.();
    }
    const f = this.frames.shift();
    if (f) return Promise.resolve(this.hand(f));
    if (this.dead) return Promise.reject(this.dead);
    return new Promise<Frame>((resolve, reject) => {
      const timed = timeoutMs !== undefined && timeoutMs > 0;
      const waiter: Waiter = {
        resolve: (fr) => resolve(this.hand(fr)),
        reject,
        deadline: timed ? performance.now() + timeoutMs : Number.POSITIVE_INFINITY,
        timeoutError:
          timeoutError ??
          (() =>
            new PeerError(
              `the peer sent nothing for ${timeoutMs} ms (--peer-timeout); the link or the peer is down`,
            )),
      };
      this.waiters.push(waiter);
      this.armWatchdog(waiter.deadline);
    });
  }

  /** Makes sure the watchdog fires by `deadline`, and holds the process open while someone waits. */
  private armWatchdog(deadline: number): void {
    if (deadline === Number.POSITIVE_INFINITY) return;
    if (this.watchdog && this.watchdogAt <= deadline) {
      this.watchdog.ref();
      return;
    }
    clearTimeout(this.watchdog);
    this.watchdogAt = deadline;
    // setTimeout takes at most 2^31 - 1 ms (longer fires at once); a later deadline re-arms when this fires.
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, deadline - performance.now()));
    this.watchdog = setTimeout(() => this.expire(), delay);
  }

  /** No timed wait is left: the armed watchdog no longer holds the process open (as a cleared timer would not). */
  private idleWatchdog(): void {
    if (!this.waiters.some((w) => w.deadline !== Number.POSITIVE_INFINITY)) this.watchdog?.unref();
  }

  /** Rejects every waiter whose deadline has passed; re-arms for the earliest left. */
  private expire(): void {
    this.watchdog = undefined;
    this.watchdogAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    const due = this.waiters.filter((w) => w.deadline <= now);
    this.waiters = this.waiters.filter((w) => w.deadline > now);
    for (const w of due) w.reject(w.timeoutError());
    for (const w of this.waiters) this.armWatchdog(w.deadline);
  }
}

/**
 * Frames a socket receiver holds before it stops reading from the socket:
 * the same bound as the in-process channels' credits.
 */
const RECEIVE_WINDOW = CHANNEL_WINDOW;

/** A send waiting for the socket to drain: settled by the one 'drain' or 'close', or by the stall watchdog. */
interface DrainWaiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

export class SocketChannel implements FrameChannel {
  private readonly inbox = new Inbox();
  /** Frames taken off the socket that the receiver has not moved past (queued, or the one next() returned). */
  private held = 0;
  /** False once the receiver stops taking frames: what arrives then is dropped as it is read. */
  private receiving = true;
  private readonly drainWaiters = new Set<DrainWaiter>();
  /** Frames the socket has handed to the kernel (write callbacks): the stall watchdog's measure of progress. */
  private flushed = 0;
  private stallTimer: NodeJS.Timeout | undefined;

  /** sendTimeoutMs: how long the peer may take no frame while sends wait for it before it counts as gone. */
  constructor(
    private readonly socket: net.Socket,
    private readonly spec: FrameSpec,
    private readonly sendTimeoutMs = 30_000,
  ) {
    const decoder = new FrameDecoder(spec);
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (isFrame(item)) {
          this.held++;
          this.inbox.push(item, this.onReleased);
        } else {
          this.stopReceiving(new PeerError(`bad frame from the peer: ${item.message}`));
          socket.destroy();
        }
      }
      if (this.receiving && this.held >= RECEIVE_WINDOW && !socket.isPaused()) socket.pause();
    });
    socket.on('error', (e) =>
      this.stopReceiving(new PeerError(`connection to the peer failed: ${e.message}`, { cause: e })),
    );
    socket.on('close', () => this.stopReceiving(new PeerError('the peer closed the connection')));
  }

  send(type: number, payload: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed) {
        reject(new PeerError('the connection to the peer is closed'));
        return;
      }
      let waiter: DrainWaiter | undefined;
      // The callback never runs synchronously, so `waiter` is set by then.
      const ok = this.socket.write(encodeFrame(this.spec, type, 0, payload), (err) => {
        if (err) {
          if (waiter) this.dropDrainWaiter(waiter);
          reject(new PeerError(`sending to the peer failed: ${err.message}`, { cause: err }));
          return;
        }
        this.flushed++;
        if (ok) resolve();
      });
      if (!ok) waiter = this.waitForDrain(resolve, reject);
    });
  }

  /**
   * Sends past the socket's buffer wait for the peer to take the data, or
   * for the connection to die: a reset peer never drains, and must not hold
   * the source for the whole --peer-timeout. One 'drain' and one 'close'
   * listener serve every waiting send (a listener each hit Node's limit of
   * 10 once the two pipelines had 16 frames in flight), and one watchdog
   * fails them all when no frame went out for sendTimeoutMs: a per-send
   * timer would also fail a live link whose backlog (up to 16 frames of
   * 1 MiB) takes longer than that to drain.
   */
  private waitForDrain(resolve: () => void, reject: (e: Error) => void): DrainWaiter {
    const waiter: DrainWaiter = { resolve, reject };
    if (this.drainWaiters.size === 0) {
      this.socket.once('drain', this.onDrain);
      this.socket.once('close', this.onCloseWhileWaiting);
      this.watchForStall(this.flushed);
    }
    this.drainWaiters.add(waiter);
    return waiter;
  }

  /** Re-arms while frames still go out (one frame's progress at least per period); fails the waiting sends otherwise. */
  private watchForStall(seen: number): void {
    this.stallTimer = setTimeout(() => {
      if (this.flushed !== seen) {
        this.watchForStall(this.flushed);
        return;
      }
      const e = new PeerError(
        `the peer took no data for ${this.sendTimeoutMs} ms (--peer-timeout); the link or the peer is down`,
      );
      for (const w of this.settleDrainWaiters()) w.reject(e);
      this.socket.destroy();
    }, this.sendTimeoutMs);
  }

  private readonly onDrain = () => {
    for (const w of this.settleDrainWaiters()) w.resolve();
  };

  private readonly onCloseWhileWaiting = () => {
    const e = new PeerError('the peer closed the connection (a send was waiting for it to take data)');
    for (const w of this.settleDrainWaiters()) w.reject(e);
  };

  /** A send whose write failed: it no longer waits (the others still do). */
  private dropDrainWaiter(waiter: DrainWaiter): void {
    this.drainWaiters.delete(waiter);
    if (this.drainWaiters.size === 0) this.stopWatching();
  }

  /** Takes every waiting send out of the set (to be settled by the caller) and stops watching the socket. */
  private settleDrainWaiters(): DrainWaiter[] {
    const all = [...this.drainWaiters];
    this.drainWaiters.clear();
    this.stopWatching();
    return all;
  }

  private stopWatching(): void {
    this.socket.off('drain', this.onDrain);
    this.socket.off('close', this.onCloseWhileWaiting);
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }

  /** encodeFrame copies the payload, so the buffer is free as soon as the socket took the frame. */
  async sendLent(type: number, buffer: Uint8Array, length: number): Promise<Uint8Array> {
    await this.send(type, buffer.subarray(0, length));
    return buffer;
  }

  next(timeoutMs?: number, timeoutError?: () => Error): Promise<Frame> {
    return this.inbox.next(timeoutMs, timeoutError);
  }

  /**
   * Stops taking frames; the socket is read on, and what arrives dropped,
   * so a peer blocked on a full connection gets through to read our ABORT.
   */
  stopReceiving(reason: Error): void {
    this.inbox.fail(reason);
    this.receiving = false;
    this.socket.resume();
  }

  /**
   * The receiver moved past a frame: read on once fewer than RECEIVE_WINDOW
   * are held (a receiver slower than its peer stops reading at the window,
   * and TCP's flow control holds the peer's sends, instead of frames piling
   * up in this process's memory).
   */
  private readonly onReleased = () => {
    this.held--;
    if (this.held < RECEIVE_WINDOW && this.socket.isPaused()) this.socket.resume();
  };

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
 * only the byte transports need (their framing is tested there). Each end
 * holds at most CHANNEL_WINDOW frames its peer has not taken (credits).
 */
export function memoryChannelPair(spec: FrameSpec): [FrameChannel, FrameChannel] {
  const a = new Inbox();
  const b = new Inbox();
  const end = (mine: Inbox, peer: Inbox, credits: Credits, peerCredits: Credits): FrameChannel => {
    let closed = false;
    const push = async (type: number, payload: Uint8Array, release: () => void) => {
      if (closed) throw new PeerError('the channel is closed');
      if (payload.length > spec.maxPayload) {
        throw new PeerError(
          `${spec.what}: payload of ${payload.length} bytes exceeds the maximum ${spec.maxPayload}`,
        );
      }
      await credits.acquire();
      peer.push(
        {
          version: spec.version,
          type,
          id: 0,
          payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
        },
        () => {
          credits.release();
          release();
        },
      );
      // Yield so the peer runs (both ends share this thread).
      await new Promise((r) => setImmediate(r));
    };
    return {
      send: (type, payload) => push(type, payload, () => {}),
      async sendLent(type, buffer, length) {
        let consumed!: () => void;
        const done = new Promise<void>((r) => {
          consumed = r;
        });
        await push(type, buffer.subarray(0, length), consumed);
        await new Promise<void>((resolve, reject) => {
          const stop = credits.watch(reject);
          void done.then(() => {
            stop();
            resolve();
          });
        });
        return buffer;
      },
      next: (t, e) => mine.next(t, e),
      stopReceiving: (reason) => mine.fail(reason),
      close() {
        closed = true;
        const gone = new PeerError('the peer closed the connection');
        peer.fail(gone);
        peerCredits.fail(gone);
        credits.fail(new PeerError('the channel is closed'));
      },
    };
  };
  const aCredits = new Credits();
  const bCredits = new Credits();
  return [end(a, b, aCredits, bCredits), end(b, a, bCredits, aCredits)];
}
