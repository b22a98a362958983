/**
 * Bad input (docs/sysgenid.md, "Bad input"): garbage, broken frames,
 * malformed payloads, unknown requests, mid-request disconnects and stale
 * acknowledgements each get their error; nothing else changes and the
 * service process never dies of a client.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame, FRAME_HEADER_BYTES, FrameDecoder, isFrame } from '../../src/common/frames.js';
import { randomInt, seededRandom } from '../../src/common/rng.js';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { Errno, errnoOf } from '../../src/sysgenid/errors.js';
import { REPLY_FRAME, REQUEST_FRAME, Request, TYPE_PROTOCOL_ERROR } from '../../src/sysgenid/protocol.js';
import { type SysgenidServe, startSysgenidServe } from './serve-process.js';

let dir: string;
let serve: SysgenidServe;
let observer: SysgenidClient;
let tracked: SysgenidClient;

beforeAll(async () => {
  // One service for the whole file (tempDir would remove it after the first test).
  dir = mkdtempSync(join(tmpdir(), 'sysgenid-bad-'));
  serve = await startSysgenidServe(dir);
  observer = await SysgenidClient.connect(serve.socket);
  tracked = await SysgenidClient.connect(serve.socket);
  await tracked.setTracking(true);
  await observer.bump(); // generation 1, `tracked` outdated: the state nothing below may change
});

afterAll(async () => {
  await observer.close();
  await tracked.close();
  expect(await serve.stop()).toBe(0);
  rmSync(dir, { recursive: true, force: true });
});

async function expectUnchanged(): Promise<void> {
  expect(serve.cli.child.exitCode).toBeNull();
  expect(await observer.get()).toBe(1);
  expect(await observer.outdated()).toBe(1);
  expect(await tracked.readable()).toBe(true);
}

/** Sends bytes on a raw connection; resolves with everything the service sent back before closing it. */
function sendRaw(bytes: Uint8Array, closeAfter = false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(serve.socket);
    const chunks: Buffer[] = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('connect', () => {
      socket.write(bytes);
      if (closeAfter) socket.end();
    });
  });
}

async function errnoOfRequest(
  c: SysgenidClient,
  type: number,
  payload: Uint8Array,
): Promise<string | undefined> {
  try {
    await c.rawRequest(type, payload);
    return undefined;
  } catch (err) {
    return errnoOf(err);
  }
}

describe('sysgenid bad input', () => {
  it('answers garbage with one EPROTO frame, disconnects that client only', async () => {
    const reply = await sendRaw(Buffer.from('GET /generation HTTP/1.1\r\n\r\n'));
    expect(reply.length).toBeGreaterThan(FRAME_HEADER_BYTES);
    expect(reply.readUInt16LE(6)).toBe(TYPE_PROTOCOL_ERROR);
    expect(reply.readInt32LE(FRAME_HEADER_BYTES)).toBe(Errno.EPROTO);
    expect(reply.subarray(FRAME_HEADER_BYTES + 8).toString()).toMatch(
      /expected magic 0x44494753 at offset 0/,
    );
    await expectUnchanged();
  });

  it('survives seeded random byte streams on many connections', async () => {
    const rng = seededRandom(0x5eed);
    for (let i = 0; i < 40; i++) {
      const bytes = Buffer.alloc(1 + randomInt(rng, 200));
      for (let j = 0; j < bytes.length; j++) bytes[j] = randomInt(rng, 256);
      // Half start with a valid magic so the decoder gets past the first check.
      if (i % 2 === 0 && bytes.length >= 4) bytes.writeUInt32LE(REQUEST_FRAME.magic, 0);
      await sendRaw(bytes, true);
    }
    await expectUnchanged();
  });

  it('refuses an oversized length (framing lost) with EPROTO', async () => {
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUInt32LE(REQUEST_FRAME.magic, 0);
    header.writeUInt16LE(1, 4);
    header.writeUInt16LE(Request.GET, 6);
    header.writeUInt32LE(1 << 30, 12);
    const reply = await sendRaw(header);
    expect(reply.readInt32LE(FRAME_HEADER_BYTES)).toBe(Errno.EPROTO);
    expect(reply.subarray(FRAME_HEADER_BYTES + 8).toString()).toMatch(/exceeds the maximum 4096/);
    await expectUnchanged();
  });

  it('answers a bad CRC with EPROTO and keeps the connection', async () => {
    const bad = encodeFrame(REQUEST_FRAME, Request.READ, 999, Uint8Array.of(1));
    bad.writeUInt32LE((bad.readUInt32LE(16) ^ 1) >>> 0, 16);
    const good = encodeFrame(REQUEST_FRAME, Request.GET, 1000, new Uint8Array(0));
    const reply = await sendRaw(Buffer.concat([bad, good]), true);
    const decoder = new FrameDecoder(REPLY_FRAME);
    const frames = decoder.push(reply).filter(isFrame);
    expect(frames.map((f) => [f.id, f.payload.readInt32LE(0)])).toEqual([
      [999, Errno.EPROTO],
      [1000, 0],
    ]);
    expect(frames[0].payload.subarray(8).toString()).toMatch(/CRC-32 mismatch/);
    expect(frames[1].payload.readUInt32LE(4)).toBe(1); // the same connection still answers
    await expectUnchanged();
  });

  it('answers unknown requests ENOTTY and malformed payloads EINVAL, naming the field', async () => {
    const c = await SysgenidClient.connect(serve.socket);
    try {
      expect(await errnoOfRequest(c, 77, new Uint8Array(0))).toBe('ENOTTY');
      expect(await errnoOfRequest(c, Request.READ, new Uint8Array(0))).toBe('EINVAL');
      expect(await errnoOfRequest(c, Request.READ, Uint8Array.of(0, 0))).toBe('EINVAL');
      expect(await errnoOfRequest(c, Request.SET_TRACKING, Uint8Array.of(2))).toBe('EINVAL');
      expect(await errnoOfRequest(c, Request.WAIT_WATCHERS, Uint8Array.of(1, 2, 3))).toBe('EINVAL');
      expect(await errnoOfRequest(c, Request.BUMP, Uint8Array.of(1))).toBe('EINVAL');
      expect(await errnoOfRequest(c, Request.SET_NAME, Buffer.alloc(65, 0x61))).toBe('EINVAL');
      await expect(c.rawRequest(Request.BUMP, Uint8Array.of(1))).rejects.toThrow(/minimum generation/);
      expect(await c.readable()).toBe(false);
    } finally {
      await c.close();
    }
    await expectUnchanged();
  });

  it('forgets a tracked outdated watcher that disconnects in the middle of a request', async () => {
    const leaving = await SysgenidClient.connect(serve.socket);
    await leaving.setTracking(true);
    await observer.bump(); // generation 2: `leaving` and `tracked` are outdated
    expect(await observer.outdated()).toBe(2);
    const frame = encodeFrame(REQUEST_FRAME, Request.WRITE, 5, Uint8Array.of(2, 0, 0, 0));
    leaving.writeRaw(frame.subarray(0, frame.length - 2)); // half an acknowledgement, then gone
    await leaving.close();
    // The half-sent ack acknowledged nothing: the count drops only because the watcher left.
    await expect.poll(() => observer.outdated()).toBe(1);
    expect(await observer.get()).toBe(2);
    // Back to the shared starting state for the other tests.
    const g = await tracked.read();
    expect(g).toBe(2);
  });

  it('refuses a stale acknowledgement with EINVAL and leaves the watcher outdated', async () => {
    const g = await observer.get();
    expect(await errnoOfRequest(tracked, Request.WRITE, Buffer.from(Uint32Array.of(g - 1).buffer))).toBe(
      'EINVAL',
    );
    expect(await tracked.readable()).toBe(true);
    expect(await observer.outdated()).toBe(1);
    expect(serve.cli.child.exitCode).toBeNull();
  });
});
