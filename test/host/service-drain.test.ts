/**
 * The service's drain, paging and backpressure paths in-process, over a
 * real socket (the same paths as test/integration/serve-drain.test.ts,
 * without a child process).
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BinaryReader, BinaryWriter } from '../../src/common/binary.js';
import { encodeFrame } from '../../src/common/frames.js';
import { encodeAttributes, KVM_HC_MAP_GPA_RANGE } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import {
  HOST_FRAME,
  MAX_CURSORS,
  MessageType,
  Status,
  TYPE_NOTICE,
} from '../../src/host/service-protocol.js';
import { HostService } from '../../src/host/service-server.js';
import { RawConnection } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function start(shared: number) {
  const dir = tempDir();
  const store = CbitStore.open(join(dir, 'host.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, 1 << 20);
  for (let i = 0; i < shared; i++) store.applyChange(1, { gfn: 2 * i, npages: 1, encrypted: false });
  store.commit();
  const socketPath = join(dir, 'host.sock');
  const service = await HostService.start({ store, socketPath });
  cleanup.push(() => store.close());
  cleanup.push(() => service.stop(100));
  return { store, service, socketPath };
}

const u32 = (v: number) => new BinaryWriter().u32(v).finish();

describe('drain in-process', () => {
  it('notice, SHUTTING_DOWN for a request completed after it, refused connections, and a timeout for a stuck client', async () => {
    const { service, socketPath } = await start(0);
    const c = await HostServiceClient.connect(socketPath);
    const late = await RawConnection.connect(socketPath);
    const stuck = await RawConnection.connect(socketPath);
    const frame = encodeFrame(HOST_FRAME, MessageType.QUERY_VM, 5, u32(1));
    late.socket.write(frame.subarray(0, 7));
    stuck.socket.write(frame.subarray(0, 7));
    await c.listVms(); // the partial frames have arrived
    const shutdown = new Promise<void>((r) => c.once('shutdown', r));
    const stopped = service.stop(300);
    await shutdown;
    expect((await late.next())?.type).toBe(TYPE_NOTICE);
    late.socket.write(frame.subarray(7));
    const reply = (await late.next())!;
    expect([reply.id, RawConnection.status(reply)]).toEqual([5, Status.SHUTTING_DOWN]);
    await expect(HostServiceClient.connect(socketPath)).rejects.toThrow();
    await stopped; // the stuck client was cut at the timeout
    expect(stuck.closed || (await stuck.next()) !== undefined).toBe(true);
    expect(await stuck.next()).toBeUndefined();
  });
});

describe('SYNC paging in-process', () => {
  it('pages through a cursor, refuses a finished one, and drops the oldest past the limit', async () => {
    const { socketPath } = await start(40_000);
    const raw = await RawConnection.connect(socketPath);
    const cursors: number[] = [];
    for (let i = 0; i <= MAX_CURSORS; i++) {
      raw.send(MessageType.SYNC, 100 + i, u32(1));
      const r = new BinaryReader((await raw.next())!.payload, 'sync');
      r.bytes(8 + 32, 'prefix and counts');
      cursors.push(r.u32('cursor'));
    }
    // The first SYNC's stream (40,000 delta + 80,000 state ranges) needs a second page; later ones are state only.
    expect(cursors.every((c) => c !== 0)).toBe(true);
    raw.send(MessageType.SYNC_NEXT, 1, new BinaryWriter().u32(cursors[0]).u32(0).finish());
    expect(RawConnection.status((await raw.next())!)).toBe(Status.UNKNOWN_CURSOR);
    raw.send(MessageType.SYNC_NEXT, 2, new BinaryWriter().u32(cursors[MAX_CURSORS]).u32(0).finish());
    const page = new BinaryReader((await raw.next())!.payload, 'page');
    page.bytes(8, 'prefix');
    expect(page.u32('cursor')).toBe(0);
    expect(page.u32('count')).toBe(80_000 - 65_536);
    raw.socket.destroy();
    const c = await HostServiceClient.connect(socketPath);
    const s = await c.sync(1);
    expect(s.delta).toEqual([]);
    expect(s.state.sharedCount).toBe(40_000);
    await c.close();
  });
});

describe('backpressure in-process', () => {
  it('a client that stops reading is no longer read; once it reads again every request is answered', async () => {
    const { socketPath } = await start(50_000);
    const greedy = await RawConnection.connect(socketPath);
    greedy.socket.pause();
    const req = new BinaryWriter().u32(1).u32(1_000_000).u64(0).finish();
    for (let i = 1; i <= 15; i++) greedy.send(MessageType.QUERY_RANGES, i, req);
    const c = await HostServiceClient.connect(socketPath);
    for (let i = 0; i < 5; i++) expect((await c.queryVm(1)).rangeCount).toBe(100_000);
    await c.hypercall(1, {
      nr: BigInt(KVM_HC_MAP_GPA_RANGE),
      a0: 0n,
      a1: 1n,
      a2: encodeAttributes(true),
    });
    greedy.socket.resume();
    const ids: number[] = [];
    for (let i = 0; i < 15; i++) ids.push((await greedy.next())!.id);
    expect(ids).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    greedy.socket.destroy();
    await c.close();
  });
});

describe('setup errors', () => {
  it('a socket path too long for sun_path and a --max-memory below 64 MiB', async () => {
    const dir = tempDir();
    const store = CbitStore.open(join(dir, 'host.db'));
    cleanup.push(() => store.close());
    await expect(HostService.start({ store, socketPath: join(dir, 'x'.repeat(120)) })).rejects.toThrow(
      /longer than the 107 a Unix socket address holds/,
    );
    await expect(
      HostService.start({ store, socketPath: join(dir, 's'), maxMemory: 2 ** 20 }),
    ).rejects.toThrow(/at least 64 MiB/);
  });
});
