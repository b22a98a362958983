/**
 * The frame channels' failure paths (src/migration/channel.ts,
 * port-channel.ts): a dead channel fails every later wait at once, a peer
 * that takes no data is cut off after the send timeout, a peer that never
 * finishes closing is cut off, and a closed or oversized send is refused;
 * each a PeerError saying what happened.
 */
import net from 'node:net';
import { join } from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerError } from '../../src/common/errors.js';
import { encodeFrame } from '../../src/common/frames.js';
import {
  CHANNEL_WINDOW,
  type FrameChannel,
  Inbox,
  memoryChannelPair,
  SocketChannel,
} from '../../src/migration/channel.js';
import { portChannel } from '../../src/migration/port-channel.js';
import { MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import { tempDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A connected unix socket pair: `near` wrapped in a SocketChannel, `far` the raw peer. */
async function socketPair(options: { sendTimeoutMs?: number; allowHalfOpen?: boolean } = {}) {
  const path = join(tempDir(), 'c.sock');
  const server = net.createServer({ allowHalfOpen: options.allowHalfOpen ?? false });
  await new Promise<void>((r) => server.listen(path, r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const near = net.connect(path);
  await new Promise<void>((r) => near.once('connect', () => r()));
  const far = await accepted;
  cleanups.push(() => {
    near.destroy();
    far.destroy();
    server.close();
  });
  return { channel: new SocketChannel(near, MIGRATION_FRAME, options.sendTimeoutMs), near, far };
}

describe('frame channels fail cleanly', () => {
  it('a failed inbox rejects every later wait at once with the first error', async () => {
    const inbox = new Inbox();
    const first = new PeerError('the peer closed the connection');
    const waiting = inbox.next(60_000);
    inbox.fail(first);
    inbox.fail(new PeerError('a later failure'));
    await expect(waiting).rejects.toBe(first);
    await expect(inbox.next(60_000)).rejects.toBe(first);
    await expect(inbox.next()).rejects.toBe(first);
  });

  it('a frame that arrives in time clears the timeout: no late rejection', async () => {
    const inbox = new Inbox();
    const got = inbox.next(60_000, () => new Error('must not fire'));
    inbox.push({ version: 1, type: Msg.ROUND_END, id: 0, payload: Buffer.alloc(4) });
    expect((await got).type).toBe(Msg.ROUND_END);
  });

  it('each wait gets its own full timeout, whether the watchdog is armed for an earlier wait or has fired already', async () => {
    const inbox = new Inbox();
    const frame = () => ({ version: 1, type: Msg.ROUND_END, id: 0, payload: Buffer.alloc(4) });
    const t0 = performance.now();
    const first = inbox.next(150, () => new Error('the first wait must not time out'));
    await new Promise((r) => setTimeout(r, 30));
    inbox.push(frame());
    await first;
    await new Promise((r) => setTimeout(r, 90)); // the watchdog, armed for the first deadline, is still pending
    const t1 = performance.now();
    const second = inbox.next(150, () => new Error('second wait timed out'));
    await expect(second).rejects.toThrow('second wait timed out');
    const waited = performance.now() - t1;
    expect(waited).toBeGreaterThanOrEqual(140); // its own 150 ms (timer granularity: 1 ms), not what was left of the first
    expect(performance.now() - t0).toBeGreaterThanOrEqual(260);
    // A wait that starts after the watchdog has fired and found nothing due.
    const third = inbox.next(60, () => new Error('third wait timed out'));
    await new Promise((r) => setTimeout(r, 30));
    inbox.push(frame());
    await third;
    await new Promise((r) => setTimeout(r, 100)); // the watchdog fires for the third deadline, idle
    const t2 = performance.now();
    await expect(inbox.next(60, () => new Error('fourth wait timed out'))).rejects.toThrow(
      'fourth wait timed out',
    );
    expect(performance.now() - t2).toBeGreaterThanOrEqual(55);
    // Two waiters with different timeouts: the shorter one fails alone; the other still gets its frame.
    const long = inbox.next(5_000, () => new Error('the long wait must not time out'));
    const short = inbox.next(50, () => new Error('short wait timed out'));
    await expect(short).rejects.toThrow('short wait timed out');
    inbox.push(frame());
    expect((await long).type).toBe(Msg.ROUND_END);
  });

  it('a peer that takes no data: the send fails after the send timeout, naming --peer-timeout, and the connection is cut', async () => {
    const { channel, near, far } = await socketPair({ sendTimeoutMs: 200 });
    far.pause(); // reads nothing: the kernel buffers fill and the writes wait
    const big = new Uint8Array(8 * 2 ** 20);
    let err: unknown;
    for (let i = 0; i < 16 && !err; i++) err = await channel.send(Msg.PAGES_RAW, big).catch((e) => e);
    expect(err).toBeInstanceOf(PeerError);
    expect((err as Error).message).toBe(
      'the peer took no data for 200 ms (--peer-timeout); the link or the peer is down',
    );
    expect(near.destroyed).toBe(true);
    await expect(channel.next(60_000)).rejects.toThrow('the peer closed the connection');
    await expect(channel.send(Msg.ROUND_END, new Uint8Array(4))).rejects.toThrow(
      'the connection to the peer is closed',
    );
  });

  it('a peer that dies while a send waits for it to drain fails the send at once, not after the send timeout', async () => {
    // The send timeout is far beyond the test's own: only the connection's death can end the wait.
    const { channel, far } = await socketPair({ sendTimeoutMs: 600_000 });
    far.pause();
    const big = new Uint8Array(8 * 2 ** 20);
    const pending = channel.send(Msg.PAGES_RAW, big); // larger than the socket buffers: waits for drain
    far.destroy(); // the destination is killed mid-stream
    const err = await pending.catch((e) => e);
    expect(err).toBeInstanceOf(PeerError);
    expect((err as Error).message).toMatch(/closed the connection|sending to the peer failed/);
  }, 20_000);

  it('many sends waiting for one drain share one listener each for drain and close; all finish when the peer reads, or all fail when it dies', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    cleanups.push(() => process.off('warning', onWarning));
    const big = new Uint8Array(2 ** 20);
    for (const ending of ['reads', 'dies'] as const) {
      const { channel, near, far } = await socketPair({ sendTimeoutMs: 600_000 });
      far.pause();
      const drainBefore = near.listenerCount('drain');
      const closeBefore = near.listenerCount('close');
      // More sends than the two pipelines' frames in flight (16), each past the socket's buffer.
      const sends = Array.from({ length: 20 }, () => channel.send(Msg.PAGES_RAW, big));
      const outcomes = Promise.allSettled(sends);
      expect(near.listenerCount('drain') - drainBefore).toBe(1);
      expect(near.listenerCount('close') - closeBefore).toBe(1);
      if (ending === 'reads') {
        far.resume();
        for (const o of await outcomes) expect(o.status).toBe('fulfilled');
      } else {
        // ('error' comes first, ECONNRESET; events.once would reject on it.)
        const closed = new Promise((r) => near.once('close', r));
        far.destroy();
        await closed;
        for (const o of await outcomes) {
          expect(o.status).toBe('rejected');
          expect(((o as PromiseRejectedResult).reason as Error).message).toMatch(
            /closed the connection|sending to the peer failed/,
          );
        }
      }
      expect(near.listenerCount('drain')).toBe(drainBefore);
      expect(near.listenerCount('close')).toBe(closeBefore);
    }
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    expect(warnings.map((w) => w.name)).not.toContain('MaxListenersExceededWarning');
  }, 20_000);

  it('a slow peer that keeps taking frames is not cut off, though its backlog takes longer than the send timeout to drain', async () => {
    const { channel, far } = await socketPair({ sendTimeoutMs: 1500 });
    far.pause();
    const frame = new Uint8Array(2 ** 20);
    // 24 frames queued at once; the peer then takes about one every 100 ms
    // (2.4 s in all): each frame goes out well within the send timeout, the
    // whole backlog does not.
    const sends = Array.from({ length: 24 }, () => channel.send(Msg.PAGES_RAW, frame));
    const outcomes = Promise.allSettled(sends);
    let taken = 0;
    far.on('data', (chunk: Buffer) => {
      taken += chunk.length;
      if (taken >= 2 ** 20) {
        taken -= 2 ** 20;
        far.pause();
        setTimeout(() => far.resume(), 100);
      }
    });
    const t0 = performance.now();
    far.resume();
    for (const o of await outcomes) expect(o.status).toBe('fulfilled');
    // It did wait past one timeout: the watchdog re-armed on progress.
    expect(performance.now() - t0).toBeGreaterThan(1500);
  }, 20_000);

  it('a receiver that takes no frames stops reading at its window: the peer is held back, then gets every frame in order; after stopReceiving it reads and drops', async () => {
    const { channel, far } = await socketPair();
    // 64 frames of 256 KiB from the peer (16 MiB, far beyond the socket's
    // buffers), while nobody asks for a frame.
    const payload = (i: number) => new Uint8Array(256 * 1024).fill(i);
    for (let i = 0; i < 64; i++) far.write(encodeFrame(MIGRATION_FRAME, Msg.PAGES_RAW, 0, payload(i)));
    // Reading everything would have emptied the peer's buffer long before:
    // a receiver that held it all drained 16 MiB of loopback in milliseconds.
    await new Promise((r) => setTimeout(r, 500));
    expect(far.writableLength).toBeGreaterThan(0);
    for (let i = 0; i < 32; i++) {
      const f = await channel.next(10_000);
      expect(f.payload.length).toBe(256 * 1024);
      expect(f.payload[0]).toBe(i);
    }
    // The receiver gives up: what arrives is read and dropped, the peer is not held.
    channel.stopReceiving(new PeerError('cancelled by the test'));
    await waitFor(() => far.writableLength === 0, "the peer's writes to go out");
    // The frames that had arrived before stay readable, then the reason.
    let err: unknown;
    for (let i = 0; i < 64 && !err; i++)
      err = await channel.next(1000).then(
        () => undefined,
        (e) => e,
      );
    expect((err as Error).message).toBe('cancelled by the test');
  }, 20_000);

  it('close() cuts off a peer that never finishes closing its side', async () => {
    const { channel, near, far } = await socketPair({ allowHalfOpen: true });
    const ended = new Promise<void>((r) => far.once('end', () => r()));
    const cut = new Promise<void>((r) => near.once('close', () => r()));
    far.resume();
    channel.close();
    channel.close(); // a second close is a no-op
    await ended; // our side said goodbye; the peer never answers with its own end
    await cut; // ... so our side destroys the connection (after 2 s)
    expect(far.writableEnded).toBe(false);
    await expect(channel.next(1000)).rejects.toBeInstanceOf(PeerError);
  });

  it('in memory: a send after close, or a payload past the maximum, is refused; the peer learns of the close', async () => {
    const [a, b] = memoryChannelPair({ ...MIGRATION_FRAME, maxPayload: 16 });
    await expect(a.send(Msg.ROUND_END, new Uint8Array(17))).rejects.toThrow(
      'migration stream frame: payload of 17 bytes exceeds the maximum 16',
    );
    await a.send(Msg.ROUND_END, new Uint8Array(4));
    a.close();
    await expect(a.send(Msg.ROUND_END, new Uint8Array(4))).rejects.toThrow('the channel is closed');
    // What was sent before the close still arrives, then the close.
    expect((await b.next(1000)).type).toBe(Msg.ROUND_END);
    await expect(b.next(1000)).rejects.toThrow('the peer closed the connection');
  });

  it('in memory: a lent frame comes back once the peer moves on; a peer that closes first fails the wait', async () => {
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const frame = new Uint8Array(32).fill(3);
    let taking = b.next(1000);
    for (let i = 0; i < 20; i++) {
      const back = a.sendLent(Msg.PAGES_RAW, frame, 8);
      expect((await taking).payload.length).toBe(8);
      taking = b.next(1000); // releases the frame taken before
      expect(await back).toBe(frame);
    }
    taking.catch(() => {});
    const lost = a.sendLent(Msg.PAGES_RAW, frame, 8);
    lost.catch(() => {});
    await new Promise((r) => setTimeout(r, 20)); // the frame is out: its wait is registered
    b.close();
    await expect(lost).rejects.toThrow('the peer closed the connection');
  });

  it('over a MessagePort: a send after close is refused, a second close is a no-op, the peer learns of it', async () => {
    const { port1, port2 } = new MessageChannel();
    const a = portChannel(port1, MIGRATION_FRAME.version);
    const b = portChannel(port2, MIGRATION_FRAME.version);
    cleanups.push(() => b.close());
    await a.send(Msg.ROUND_END, new Uint8Array(4));
    a.close();
    a.close();
    await expect(a.send(Msg.ROUND_END, new Uint8Array(4))).rejects.toThrow('the channel is closed');
    expect((await b.next(5000)).type).toBe(Msg.ROUND_END);
    await expect(b.next(5000)).rejects.toThrow('the peer closed the connection');
  });

  it('over a MessagePort: a lent buffer comes back once the peer moves on; if the peer closes first, the wait fails', async () => {
    const { port1, port2 } = new MessageChannel();
    const a = portChannel(port1, MIGRATION_FRAME.version);
    const b = portChannel(port2, MIGRATION_FRAME.version);
    const frame = new Uint8Array(64).fill(7);
    const back = a.sendLent(Msg.PAGES_RAW, frame, 16);
    const got = await b.next(5000);
    expect([...got.payload]).toEqual(new Array(16).fill(7));
    await b.send(Msg.ROUND_ACK, new Uint8Array(5)); // the frame is still b's: the buffer stays out
    expect((await a.next(5000)).type).toBe(Msg.ROUND_ACK);
    void b.next(5000).catch(() => {}); // taking the next frame releases the one before
    const returned = await back;
    expect(returned.byteLength).toBe(64); // the same memory, whole, transferred back
    expect(returned[40]).toBe(7);
    // A second lent frame whose receiver closes without taking it.
    const lost = a.sendLent(Msg.PAGES_RAW, returned, 16);
    await new Promise((r) => setTimeout(r, 20));
    b.close();
    await expect(lost).rejects.toThrow(PeerError);
    await expect(lost).rejects.toThrow('the peer closed the connection');
    await expect(a.sendLent(Msg.PAGES_RAW, new Uint8Array(8), 8)).rejects.toThrow(
      'the peer closed the connection',
    );
  });

  it('over a MessagePort: a lent frame in shared memory is shared, not transferred, and comes back as the same view', async () => {
    const { port1, port2 } = new MessageChannel();
    const a = portChannel(port1, MIGRATION_FRAME.version);
    const b = portChannel(port2, MIGRATION_FRAME.version);
    cleanups.push(() => {
      a.close();
      b.close();
    });
    const pool = new Uint8Array(new SharedArrayBuffer(256));
    const frame = pool.subarray(64, 128).fill(9); // a frame in the middle of its pool
    const back = a.sendLent(Msg.PAGES_RAW, frame, 16);
    const got = await b.next(5000);
    expect([...got.payload]).toEqual(new Array(16).fill(9));
    expect(got.payload.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(frame.byteLength).toBe(64); // still the sender's: not detached
    void b.next(5000).catch(() => {}); // releases it
    const returned = await back;
    expect(returned).toBe(frame);
    // Out of range, or an ArrayBuffer not owned from offset 0: refused before anything is sent.
    await expect(a.sendLent(Msg.PAGES_RAW, frame, 65)).rejects.toThrow(
      "sendLent: length 65 exceeds the buffer's 64 bytes",
    );
    await expect(a.sendLent(Msg.PAGES_RAW, new Uint8Array(64).subarray(8), 8)).rejects.toThrow(
      'sendLent: the buffer must own its ArrayBuffer from offset 0, or be shared memory',
    );
  });

  /** Each kind of channel end, with its peer. */
  const ends: [string, () => Promise<[FrameChannel, FrameChannel]>][] = [
    ['in memory', async () => memoryChannelPair(MIGRATION_FRAME)],
    [
      'over a MessagePort',
      async () => {
        const { port1, port2 } = new MessageChannel();
        return [portChannel(port1, MIGRATION_FRAME.version), portChannel(port2, MIGRATION_FRAME.version)];
      },
    ],
    [
      'over a socket',
      async () => {
        const { channel, far } = await socketPair();
        return [channel, new SocketChannel(far, MIGRATION_FRAME)];
      },
    ],
  ];
  for (const [kind, pair] of ends) {
    it(`${kind}: stopReceiving fails the pending and every later wait with its reason, and sends still reach the peer`, async () => {
      const [a, b] = await pair();
      cleanups.push(() => {
        a.close();
        b.close();
      });
      const waiting = a.next(60_000);
      const reason = new Error('cancelled by SIGINT');
      a.stopReceiving(reason);
      await expect(waiting).rejects.toBe(reason);
      // More than a window of frames arrive after it: each is dropped and its
      // credit returned, so the peer's sends never stall (nor hit their timeout).
      for (let i = 0; i < CHANNEL_WINDOW + 4; i++) await b.send(Msg.ROUND_END, new Uint8Array(4));
      await new Promise((r) => setTimeout(r, 20)); // let the last arrive
      await expect(a.next(60_000)).rejects.toBe(reason);
      await a.send(Msg.ABORT, Buffer.from('cancelled by SIGINT'));
      const told = await b.next(5000);
      expect(told.type).toBe(Msg.ABORT);
      expect(Buffer.from(told.payload).toString()).toBe('cancelled by SIGINT');
    });
  }
});
