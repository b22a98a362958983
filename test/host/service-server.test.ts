import { spawnSync } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BinaryWriter } from '../../src/common/binary.js';
import { encodeFrame, FRAME_HEADER_BYTES } from '../../src/common/frames.js';
import {
  KVM_EINVAL,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MIGRATION_READY,
  mapGpaRangeCall,
} from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient, ServiceRejectedError } from '../../src/host/service-client.js';
import { HOST_FRAME, MessageType, Status } from '../../src/host/service-protocol.js';
import { HostService } from '../../src/host/service-server.js';
import { tempDir } from '../support/tmp.js';

const NR = BigInt(KVM_HC_MAP_GPA_RANGE);
const call = mapGpaRangeCall;

const open: { service: HostService; store: CbitStore; clients: HostServiceClient[] }[] = [];

async function startService() {
  const dir = tempDir();
  const store = CbitStore.open(join(dir, 'host.db'));
  const socketPath = join(dir, 'host.sock');
  const service = await HostService.start({ store, socketPath });
  const entry = { service, store, clients: [] as HostServiceClient[] };
  open.push(entry);
  const connect = async () => {
    const c = await HostServiceClient.connect(socketPath);
    entry.clients.push(c);
    return c;
  };
  return { dir, store, socketPath, service, connect };
}

afterEach(async () => {
  for (const e of open.splice(0)) {
    for (const c of e.clients) await c.close();
    await e.service.stop();
    e.store.close();
  }
});

describe('host service over a real Unix socket', () => {
  it('serves register, hypercalls, batches, queries, syncs and migration control', async () => {
    const { connect, socketPath } = await startService();
    expect(statSync(socketPath).mode & 0o777).toBe(0o600);
    const c = await connect();
    await c.registerVm(1, 2 ** 28); // 1 TiB
    expect(await c.hypercall(1, call(2 ** 28 - 1, 1, false))).toEqual({ ret: 0, seq: 1 });
    const batch = await c.hypercallBatch(1, [
      call(0, 512, false),
      call(0x10_0000, 1, false),
      call(5, 0, false),
    ]);
    expect(batch.map((b) => b.ret)).toEqual([0, 0, -KVM_EINVAL]);
    expect(batch.map((b) => b.seq)).toEqual([2, 3, undefined]);
    const vm = await c.queryVm(1);
    expect(vm).toMatchObject({
      npages: 2 ** 28,
      sharedPages: 514,
      lastSeq: 3,
      lastSyncSeq: 0,
      rangeCount: 5,
    });
    const page = await c.queryRanges(1, 0, 2);
    expect(page.ranges).toEqual([
      { gfn: 0, npages: 512, encrypted: false },
      { gfn: 512, npages: 0x10_0000 - 512, encrypted: true },
    ]);
    expect(page.next).toBe(0x10_0000);
    const sync = await c.sync(1);
    expect(sync.seq).toBe(3);
    expect(sync.delta).toHaveLength(3);
    expect(sync.state.sharedCount).toBe(514);
    expect((await c.sync(1)).delta).toEqual([]);
    await c.setMigrationControl(1, KVM_MIGRATION_READY);
    expect(await c.getMigrationControl(1)).toBe(KVM_MIGRATION_READY);
    expect(await c.listVms()).toEqual([1]);
  });

  it('answers many pipelined single hypercalls from several connections, each durable', async () => {
    const { connect, store } = await startService();
    const clients = await Promise.all([connect(), connect(), connect()]);
    await clients[0].registerVm(2, 4096);
    const replies = await Promise.all(
      clients.flatMap((c, k) =>
        Array.from({ length: 200 }, (_, i) => c.hypercall(2, call(k * 1000 + i, 1, false))),
      ),
    );
    expect(replies.every((r) => r.ret === 0)).toBe(true);
    expect(new Set(replies.map((r) => r.seq)).size).toBe(600);
    expect(store.hasPending).toBe(false);
    expect(store.info(2).sharedPages).toBe(600);
  });
});

describe('host service: bad input gets a precise error and changes nothing', () => {
  async function withVm() {
    const s = await startService();
    const c = await s.connect();
    await c.registerVm(1, 1024);
    await c.hypercall(1, call(3, 1, false));
    return { ...s, c };
  }

  it('a hypercall that fails decoding: the KVM code and the argument named', async () => {
    const { c, store } = await withVm();
    const r = await c.hypercall(1, { nr: NR, a0: 0x1003n, a1: 1n, a2: 0n });
    expect(r.ret).toBe(-KVM_EINVAL);
    expect(r.message).toMatch(/gpa 0x1003 is not 4 KiB aligned/);
    expect((await c.hypercall(1, { nr: 99n, a0: 0n, a1: 1n, a2: 0n })).ret).toBe(-1000);
    expect(store.info(1).lastSeq).toBe(1);
  });

  it('an unknown VM', async () => {
    const { c, store } = await withVm();
    await expect(c.hypercall(9, call(0, 1, false))).rejects.toThrow(/vm 9 is not registered/);
    await expect(c.hypercallBatch(9, [call(0, 1, false)])).rejects.toBeInstanceOf(ServiceRejectedError);
    await expect(c.sync(9)).rejects.toThrow(/vm 9/);
    expect(store.info(1).lastSeq).toBe(1);
  });

  it('an unknown message type and a malformed payload: the connection survives', async () => {
    const { c, store } = await withVm();
    expect(await c.rawRequest(77, new Uint8Array(4))).toMatchObject({
      status: Status.UNKNOWN_TYPE,
      message: /unknown message type 77/,
    });
    const truncated = await c.rawRequest(
      MessageType.HYPERCALL,
      new BinaryWriter().u32(1).u32(0).u64(12).finish(),
    );
    expect(truncated.status).toBe(Status.BAD_PAYLOAD);
    expect(truncated.message).toMatch(
      /HYPERCALL payload: expected 32 more bytes for hypercall \(nr, a0, a1, a2\) at offset 8, got 8/,
    );
    const extra = await c.rawRequest(MessageType.QUERY_VM, new BinaryWriter().u32(1).u32(5).finish());
    expect(extra.message).toMatch(/expected end of payload at offset 4, got 4 extra bytes/);
    const badFlags = await c.rawRequest(
      MessageType.REGISTER_VM,
      new BinaryWriter().u32(5).u32(6).u64(10).finish(),
    );
    expect(badFlags).toMatchObject({ status: Status.INVALID_ARGUMENT });
    expect((await c.queryVm(1)).lastSeq).toBe(1);
    expect(store.hasVm(5)).toBe(false);
  });

  it('a frame with a bad CRC is refused and the connection survives', async () => {
    const { c, store } = await withVm();
    const payload = new BinaryWriter().u32(1).finish();
    const frame = encodeFrame(HOST_FRAME, MessageType.QUERY_VM, 4242, payload);
    frame[FRAME_HEADER_BYTES] ^= 1; // corrupt the payload
    c.writeRaw(frame);
    expect((await c.queryVm(1)).lastSeq).toBe(1);
    expect(store.info(1).lastSeq).toBe(1);
  });

  it('an oversized frame or a bad magic: an error reply, then the connection closes', async () => {
    const { socketPath, store } = await withVm();
    for (const corrupt of ['length', 'magic'] as const) {
      const raw = net.connect(socketPath);
      await new Promise((r) => raw.once('connect', r));
      const frame = encodeFrame(HOST_FRAME, MessageType.HYPERCALL, 1, new Uint8Array(40));
      if (corrupt === 'length') frame.writeUInt32LE(HOST_FRAME.maxPayload + 1, 12);
      else frame.writeUInt32LE(0xdeadbeef, 0);
      const chunks: Buffer[] = [];
      raw.on('data', (d) => chunks.push(d));
      const closed = new Promise((r) => raw.once('close', r));
      raw.write(frame);
      await closed;
      const reply = Buffer.concat(chunks);
      expect(reply.readUInt16LE(6)).toBe(0xffff);
      expect(reply.subarray(FRAME_HEADER_BYTES + 12).toString()).toMatch(
        corrupt === 'length'
          ? /payload length .* exceeds the maximum/
          : /expected magic 0x4b545653 at offset 0, got 0xdeadbeef/,
      );
    }
    expect(store.info(1).lastSeq).toBe(1);
  });
});

describe('host service socket path handling', () => {
  it('refuses a path held by a live server', async () => {
    const { socketPath, store } = await startService();
    await expect(HostService.start({ store, socketPath })).rejects.toThrow(/held by a live server/);
  });

  it('replaces a stale socket left by a dead server', async () => {
    const dir = tempDir();
    const socketPath = join(dir, 'stale.sock');
    // A server killed with SIGKILL leaves its socket file behind.
    spawnSync(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(statSync(socketPath).isSocket()).toBe(true);
    const store = CbitStore.open(join(dir, 'db'));
    const service = await HostService.start({ store, socketPath });
    open.push({ service, store, clients: [] });
    const c = await HostServiceClient.connect(socketPath);
    open[open.length - 1].clients.push(c);
    expect(await c.listVms()).toEqual([]);
  });

  it('refuses a path that is not a socket', async () => {
    const dir = tempDir();
    const path = join(dir, 'file');
    writeFileSync(path, 'x');
    const store = CbitStore.open(join(dir, 'db'));
    await expect(HostService.start({ store, socketPath: path })).rejects.toThrow(
      /exists and is not a socket/,
    );
    store.close();
  });

  it('makes the socket group-accessible with --group', async () => {
    const dir = tempDir();
    const store = CbitStore.open(join(dir, 'db'));
    const socketPath = join(dir, 'g.sock');
    const service = await HostService.start({ store, socketPath, group: '0' });
    open.push({ service, store, clients: [] });
    expect(statSync(socketPath).mode & 0o777).toBe(0o660);
    expect(statSync(socketPath).gid).toBe(0);
    await expect(
      HostService.start({ store, socketPath: join(dir, 'h.sock'), group: 'no-such-group-x' }),
    ).rejects.toThrow(/group "no-such-group-x" does not exist/);
  });
});

describe('host service: registration, UNREGISTER, batches and group commit', () => {
  it('npages outside 1..2^52 is one INVALID_ARGUMENT, also from 2^53 on; a duplicate id changes nothing', async () => {
    const { connect, store } = await startService();
    const c = await connect();
    for (const npages of [0n, 2n ** 52n + 1n, 2n ** 53n, 2n ** 64n - 1n]) {
      const r = await c.rawRequest(
        MessageType.REGISTER_VM,
        new BinaryWriter().u32(3).u32(1).u64(npages).finish(),
      );
      expect(r.status, `npages ${npages}`).toBe(Status.INVALID_ARGUMENT);
      expect(r.message).toMatch(/npages .* must be from 1 to 2\^52/);
    }
    await c.registerVm(3, 2 ** 52);
    await c.hypercall(3, call(2 ** 52 - 1, 1, false));
    await expect(c.registerVm(3, 16)).rejects.toThrow(/vm 3 is already registered/);
    expect(store.info(3)).toMatchObject({ npages: 2 ** 52, lastSeq: 1 });
  });

  it('UNREGISTER_VM forgets the VM durably; the id starts again at seq 1', async () => {
    const { connect, store, dir } = await startService();
    const c = await connect();
    await c.registerVm(4, 1024);
    await c.hypercall(4, call(1, 1, false));
    await c.setMigrationControl(4, KVM_MIGRATION_READY);
    await c.sync(4);
    await c.unregisterVm(4);
    expect(await c.listVms()).toEqual([]);
    await expect(c.queryVm(4)).rejects.toThrow(/vm 4 is not registered/);
    await expect(c.unregisterVm(4)).rejects.toBeInstanceOf(ServiceRejectedError);
    await c.registerVm(4, 64, false);
    expect(await c.hypercall(4, call(0, 1, true))).toEqual({ ret: 0, seq: 1 });
    expect(await c.getMigrationControl(4)).toBe(0n);
    store.commit();
    const copy = CbitStore.open(join(dir, 'host.db'), { readonly: true });
    expect(copy.info(4)).toMatchObject({ npages: 64, lastSeq: 1, encryptedPages: 1 });
    copy.close();
  });

  it('a batch is not atomic: a failing call has its own ret and seq 0; a count-0 batch is OK and changes nothing', async () => {
    const { connect, store } = await startService();
    const c = await connect();
    await c.registerVm(1, 128);
    expect(await c.hypercallBatch(1, [])).toEqual([]);
    const out = await c.hypercallBatch(1, [call(0, 1, false), call(127, 2, false), call(5, 1, false)]);
    expect(out).toEqual([{ ret: 0, seq: 1 }, { ret: -KVM_EINVAL }, { ret: 0, seq: 2 }]);
    expect(store.info(1).sharedPages).toBe(2);
  });

  it('many clients each waiting for its ack share commits (group commit across clients)', async () => {
    const { connect, dir } = await startService();
    const clients = await Promise.all(Array.from({ length: 16 }, () => connect()));
    await clients[0].registerVm(1, 1 << 16);
    for (let round = 0; round < 20; round++) {
      await Promise.all(clients.map((c, k) => c.hypercall(1, call(round * 16 + k, 1, round % 2 === 0))));
    }
    const { default: Database } = await import('better-sqlite3');
    const raw = new Database(join(dir, 'host.db'), { readonly: true });
    const segments = (
      raw.prepare('SELECT count(*) AS n FROM change_segments WHERE vm = 1').get() as { n: number }
    ).n;
    raw.close();
    // 320 acknowledged changes; without group commit, one commit (segment) each.
    expect(segments).toBeLessThan(320);
  });
});
