/**
 * A FrameChannel over a worker_threads MessagePort, so the destination of a
 * one-process migration runs on its own thread (and core): frames cross
 * without encoding, and page buffers are transferred, not copied.
 *
 * Backpressure by credits: a sender has at most CHANNEL_WINDOW frames the
 * peer has not taken; the receiver returns a credit (CONSUMED) when it calls
 * next() after taking a frame, and with it the buffer of a lent frame
 * (transferred back: the same memory, already faulted in), so page frames
 * cycle between the threads without being allocated again. A frame in
 * shared memory (a SharedArrayBuffer: the page sender's pools, on huge
 * pages) is not transferred at all: both threads see the same bytes, and the
 * CONSUMED message alone hands it back.
 */
import type { MessagePort } from 'node:worker_threads';
import { PeerError } from '../common/errors.js';
import type { Frame } from '../common/frames.js';
import { Credits, type FrameChannel, Inbox } from './channel.js';

type PortMessage =
  | { kind: 'frame'; id: number; type: number; payload: Uint8Array; lent: boolean }
  | { kind: 'consumed'; id: number; buffer?: ArrayBuffer }
  | { kind: 'close' };

/** sendTimeoutMs: how long a send may wait for a credit before the peer counts as gone. */
export function portChannel(port: MessagePort, version: number, sendTimeoutMs = 30_000): FrameChannel {
  const inbox = new Inbox();
  const credits = new Credits();
  /**
   * Lent frames waiting for their buffer, by id (each also watches the
   * credits, which fail it if the channel dies): the transferred ArrayBuffer
   * comes back with CONSUMED; a shared one never left.
   */
  const lent = new Map<number, (buffer: ArrayBuffer | undefined) => void>();
  let nextId = 1;
  let closed = false;
  const gone = () => {
    const e = new PeerError('the peer closed the connection');
    inbox.fail(e);
    credits.fail(e);
  };
  port.on('message', (m: PortMessage) => {
    if (m.kind === 'close') gone();
    else if (m.kind === 'consumed') {
      credits.release();
      const back = lent.get(m.id);
      lent.delete(m.id);
      back?.(m.buffer);
    } else {
      const payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
      const release = () => {
        if (closed) return;
        if (m.lent && m.payload.buffer instanceof ArrayBuffer) {
          const buffer = m.payload.buffer;
          port.postMessage({ kind: 'consumed', id: m.id, buffer } satisfies PortMessage, [buffer]);
        } else port.postMessage({ kind: 'consumed', id: m.id } satisfies PortMessage);
      };
      inbox.push({ version, type: m.type, id: m.id, payload } satisfies Frame, release);
    }
  });
  port.on('close', gone);

  /**
   * Waits for a credit, failing when the peer takes no frame for
   * sendTimeoutMs. A free credit is taken at once, with no timer: arming and
   * clearing one per frame was a measurable part of the sender's time.
   */
  const credit = async () => {
    if (credits.tryAcquire()) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new PeerError(
              `the peer took no frame for ${sendTimeoutMs} ms (--peer-timeout); the link or the peer is down`,
            ),
          ),
        sendTimeoutMs,
      );
    });
    try {
      await Promise.race([credits.acquire(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  /** Posts a frame: an ArrayBuffer is transferred, shared memory is not (it cannot be, nor needs to be). */
  const post = (type: number, body: Uint8Array, isLent: boolean): number => {
    const id = nextId++;
    const message: PortMessage = { kind: 'frame', id, type, payload: body, lent: isLent };
    if (body.buffer instanceof ArrayBuffer) port.postMessage(message, [body.buffer]);
    else port.postMessage(message);
    return id;
  };

  return {
    async send(type, payload) {
      if (closed) throw new PeerError('the channel is closed');
      await credit();
      // Transfer the buffer when the payload owns it whole; copy otherwise.
      const owned =
        payload.byteOffset === 0 &&
        payload.byteLength === payload.buffer.byteLength &&
        payload.buffer instanceof ArrayBuffer;
      post(type, owned ? payload : payload.slice(), false);
    },
    /**
     * Not async: with a credit free (the common case) the frame is posted at
     * once, with no await and no async state machine in the per-frame path
     * (V8 optimizes this on a background thread during the migration).
     */
    sendLent(type, buffer, length) {
      if (closed) return Promise.reject(new PeerError('the channel is closed'));
      const shared = buffer.buffer instanceof SharedArrayBuffer;
      if (!shared && buffer.byteOffset !== 0) {
        return Promise.reject(
          new PeerError('sendLent: the buffer must own its ArrayBuffer from offset 0, or be shared memory'),
        );
      }
      if (length > buffer.byteLength) {
        return Promise.reject(
          new PeerError(`sendLent: length ${length} exceeds the buffer's ${buffer.byteLength} bytes`),
        );
      }
      const lend = () => {
        if (credits.failure) return Promise.reject(credits.failure); // died while the credit's wait resumed
        return new Promise<Uint8Array>((back, fail) => {
          const stop = credits.watch(fail);
          const id = post(type, buffer.subarray(0, length), true);
          lent.set(id, (returned) => {
            stop();
            back(shared ? buffer : new Uint8Array(returned!));
          });
        });
      };
      return credits.tryAcquire() ? lend() : credit().then(lend);
    },
    next: (t, e) => inbox.next(t, e),
    stopReceiving: (reason) => inbox.fail(reason),
    close() {
      if (closed) return;
      closed = true;
      credits.fail(new PeerError('the channel is closed'));
      port.postMessage({ kind: 'close' } satisfies PortMessage);
      port.close();
    },
  };
}
