/**
 * The service client against a real socket whose peer misbehaves: a
 * malformed reply becomes an 'error' event and rejected requests, never an
 * exception out of the event loop (issue 12 item 9).
 */
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BinaryWriter } from '../../src/common/binary.js';
import { PeerError } from '../../src/common/errors.js';
import { encodeFrame, FrameDecoder, isFrame } from '../../src/common/frames.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { HOST_FRAME, REPLY_FLAG, Status, TYPE_NOTICE } from '../../src/host/service-protocol.js';
import { tempDir } from '../support/tmp.js';

const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** A fake service that answers every request with reply(frameType, id). */
async function fakeService(reply: (type: number, id: number) => Buffer): Promise<string> {
  const path = join(tempDir(), 'fake.sock');
  const server = net.createServer((socket) => {
    const decoder = new FrameDecoder(HOST_FRAME);
    socket.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) if (isFrame(f)) socket.write(reply(f.type, f.id));
    });
    socket.on('error', () => {});
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

describe('HostServiceClient with a misbehaving service', () => {
  it('a reply too short for its prefix: error event, the request rejects, the process lives', async () => {
    const path = await fakeService((type, id) =>
      encodeFrame(HOST_FRAME, type | REPLY_FLAG, id, Buffer.from([1, 2])),
    );
    const c = await HostServiceClient.connect(path);
    const errors: Error[] = [];
    c.on('error', (e) => errors.push(e));
    await expect(c.queryVm(1)).rejects.toThrow(PeerError);
    expect(errors).toHaveLength(1);
    expect(errors[0].message).toMatch(/malformed reply/);
    // Later requests fail at once; nothing throws.
    await expect(c.listVms()).rejects.toThrow(PeerError);
  });

  it('an error status whose message length runs past the payload', async () => {
    const path = await fakeService((type, id) =>
      encodeFrame(
        HOST_FRAME,
        type | REPLY_FLAG,
        id,
        new BinaryWriter().i32(-22).u16(Status.INTERNAL).u16(0).u32(1000).finish(),
      ),
    );
    const c = await HostServiceClient.connect(path);
    const errors: Error[] = [];
    c.on('error', (e) => errors.push(e));
    await expect(c.listVms()).rejects.toThrow(/malformed reply/);
    expect(errors).toHaveLength(1);
  });

  it('without an error listener a malformed reply still only rejects the request', async () => {
    const path = await fakeService((type, id) =>
      encodeFrame(HOST_FRAME, type | REPLY_FLAG, id, Buffer.alloc(1)),
    );
    const c = await HostServiceClient.connect(path);
    await expect(c.listVms()).rejects.toThrow(/malformed reply/);
  });

  it('a bad frame (wrong magic) is reported the same way', async () => {
    const path = await fakeService(() => Buffer.alloc(40, 0xab));
    const c = await HostServiceClient.connect(path);
    const errors: Error[] = [];
    c.on('error', (e) => errors.push(e));
    await expect(c.listVms()).rejects.toThrow(/bad frame/);
    expect(errors).toHaveLength(1);
  });

  it('a SHUTTING_DOWN notice sets shuttingDown and emits shutdown', async () => {
    const path = await fakeService((type, id) =>
      Buffer.concat([
        encodeFrame(
          HOST_FRAME,
          TYPE_NOTICE,
          0,
          new BinaryWriter().i32(0).u16(Status.SHUTTING_DOWN).u16(0).u32(0).finish(),
        ),
        encodeFrame(
          HOST_FRAME,
          type | REPLY_FLAG,
          id,
          new BinaryWriter().i32(0).u16(0).u16(0).u32(0).finish(),
        ),
      ]),
    );
    const c = await HostServiceClient.connect(path);
    let told = false;
    c.on('shutdown', () => {
      told = true;
    });
    expect(await c.listVms()).toEqual([]);
    expect(told).toBe(true);
    expect(c.shuttingDown).toBe(true);
    await c.close();
  });

  it('a SYNC reply whose ranges do not add up is an error, not a wrong state', async () => {
    const path = await fakeService((type, id) =>
      encodeFrame(
        HOST_FRAME,
        type | REPLY_FLAG,
        id,
        new BinaryWriter()
          .i32(0)
          .u16(0)
          .u16(0)
          .u64(1)
          .u64(0)
          .u64(0)
          .u64(2)
          .u32(0)
          .u32(1)
          .u64(0)
          .u64(8)
          .u32(1)
          .u32(0)
          .finish(),
      ),
    );
    const c = await HostServiceClient.connect(path);
    await expect(c.sync(1)).rejects.toThrow(/expected 0 delta and 2 state ranges, got 1/);
    await c.close();
  });
});
