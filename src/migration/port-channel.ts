/**
 * A FrameChannel over a worker_threads MessagePort, so the destination of a
 * one-process migration runs on its own thread (and core): frames cross
 * without encoding, and page buffers are transferred, not copied.
 */
import type { MessagePort } from 'node:worker_threads';
import { PeerError } from '../common/errors.js';
import type { Frame } from '../common/frames.js';
import { type FrameChannel, Inbox } from './channel.js';

type PortMessage = { kind: 'frame'; type: number; payload: Uint8Array } | { kind: 'close' };

export function portChannel(port: MessagePort, version: number): FrameChannel {
  const inbox = new Inbox();
  let closed = false;
  port.on('message', (m: PortMessage) => {
    if (m.kind === 'close') inbox.fail(new PeerError('the peer closed the connection'));
    else {
      const payload = Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
      inbox.push({ version, type: m.type, id: 0, payload } satisfies Frame);
    }
  });
  port.on('close', () => inbox.fail(new PeerError('the peer closed the connection')));
  return {
    async send(type, payload) {
      if (closed) throw new PeerError('the channel is closed');
      // Transfer the buffer when the payload owns it whole; copy otherwise.
      const owned =
        payload.byteOffset === 0 &&
        payload.byteLength === payload.buffer.byteLength &&
        payload.buffer instanceof ArrayBuffer;
      const body = owned ? payload : payload.slice();
      port.postMessage({ kind: 'frame', type, payload: body } satisfies PortMessage, [
        body.buffer as ArrayBuffer,
      ]);
    },
    next: (t, e) => inbox.next(t, e),
    close() {
      if (closed) return;
      closed = true;
      port.postMessage({ kind: 'close' } satisfies PortMessage);
      port.close();
    },
  };
}
