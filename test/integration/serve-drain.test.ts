/**
 * `sevtrack serve` under shutdown and load, with real processes and sockets
 * (docs/host-protocol.md "Shutdown", "Paging", "Bounds"; issue items 1-3).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { BinaryReader, BinaryWriter } from '../../src/common/binary.js';
import { FRAME_HEADER_BYTES } from '../../src/common/frames.js';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { HostServiceClient, type HypercallReply, ServiceFailedError } from '../../src/host/service-client.js';
import {
  HOST_FRAME,
  MessageType,
  readRanges,
  Status,
  SYNC_PAGE_RANGES,
  TYPE_NOTICE,
  TYPE_PROTOCOL_ERROR,
} from '../../src/host/service-protocol.js';
import { RawConnection, startServe } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

const call = mapGpaRangeCall;
const queryVm = (vm: number) => new BinaryWriter().u32(vm).finish();

function vmRssKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${field}:`))!;
  return Number(line.split(/\s+/)[1]);
}

/** Shares (every other page) on gfns 0, 2, 4, ... : 2n ranges after n calls. */
async function fragment(c: HostServiceClient, vm: number, n: number, from = 0): Promise<void> {
  for (let i = from; i < from + n; i += 50_000) {
    const calls = [];
    for (let j = i; j < Math.min(from + n, i + 50_000); j++) calls.push(call(2 * j, 1, false));
    await c.hypercallBatch(vm, calls);
  }
}

describe('SIGTERM drains', () => {
  it('answers what it received, tells every client, answers later requests SHUTTING_DOWN, exits 0 with a clean database although a client keeps its end open', async () => {
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const socket = join(dir, 'host.sock');
    const serve = await startServe(db, socket, ['--drain-timeout', '2']);
    const a = await HostServiceClient.connect(socket);
    await a.registerVm(1, 1 << 16);
    const idle = await RawConnection.connect(socket); // never closes its end
    const partial = await RawConnection.connect(socket); // holds half a frame when SIGTERM comes
    const stuck = await RawConnection.connect(socket); // holds half a frame forever
    const { encodeFrame } = await import('../../src/common/frames.js');
    const half = encodeFrame(HOST_FRAME, MessageType.QUERY_VM, 77, queryVm(1));
    partial.socket.write(half.subarray(0, 10));
    stuck.socket.write(half.subarray(0, 10));

    const results: Promise<HypercallReply | Error>[] = [];
    let sentTerm = false;
    for (let i = 0; i < 3000; i++) {
      const p = a.hypercall(1, call(i * 2, 1, i % 3 === 0)).catch((e: Error) => e);
      results.push(p);
      if (i === 0)
        p.then(() => {
          sentTerm = true;
          serve.child.kill('SIGTERM');
        });
    }
    // The half-framed client completes its request after the notice: it is answered SHUTTING_DOWN.
    const notice = await partial.next();
    expect(notice?.type).toBe(TYPE_NOTICE);
    expect(RawConnection.status(notice!)).toBe(Status.SHUTTING_DOWN);
    partial.socket.write(half.subarray(10));
    const late = await partial.next();
    expect(late?.id).toBe(77);
    expect(RawConnection.status(late!)).toBe(Status.SHUTTING_DOWN);

    const outcomes = await Promise.all(results);
    expect(sentTerm).toBe(true);
    const acked = outcomes.flatMap((o, i) => (o instanceof Error ? [] : [{ i, seq: o.seq! }]));
    expect(acked.length).toBeGreaterThan(0);
    for (const o of outcomes) {
      if (!(o instanceof Error)) continue;
      // Not carried out: refused as shutting down, or cut after the notice was received.
      if (o instanceof ServiceFailedError) expect(o.status).toBe(Status.SHUTTING_DOWN);
      else expect(a.shuttingDown).toBe(true);
    }
    const exit = await serve.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(serve.stderr()).not.toMatch(/write after end/);
    expect((await idle.next())?.type).toBe(TYPE_NOTICE);
    expect((await stuck.next())?.type).toBe(TYPE_NOTICE);
    idle.socket.destroy();

    // Clean: the WAL is folded in and the newest checkpoint is the head (nothing to replay).
    expect(!existsSync(`${db}-wal`) || statSync(`${db}-wal`).size === 0).toBe(true);
    const raw = new Database(db, { readonly: true });
    const head = raw.prepare('SELECT head_seq FROM vms WHERE id = 1').get() as { head_seq: number };
    const ckpt = raw.prepare('SELECT max(seq) AS seq FROM checkpoints WHERE vm = 1').get() as { seq: number };
    raw.close();
    expect(ckpt.seq).toBe(head.head_seq);
    const store = CbitStore.open(db, { readonly: true });
    const log = new Map([...store.changes(1)].map((c) => [c.seq, c]));
    for (const { i, seq } of acked) {
      expect(log.get(seq)).toEqual({ seq, gfn: i * 2, npages: 1, encrypted: i % 3 === 0 });
    }
    store.close();
  });
});

describe('paged SYNC', () => {
  it('a large sync comes in pages within the frame limit, and another client is answered while its cursor is open', async () => {
    const dir = tempDir();
    const socket = join(dir, 'host.sock');
    const serve = await startServe(join(dir, 'host.db'), socket, ['--quiet']);
    try {
      const a = await HostServiceClient.connect(socket);
      const b = await HostServiceClient.connect(socket);
      await a.registerVm(1, 1 << 20);
      await fragment(a, 1, 100_000);
      const raw = await RawConnection.connect(socket);
      raw.send(MessageType.SYNC, 1, queryVm(1));
      const first = (await raw.next())!;
      expect(first.payload.length).toBeLessThanOrEqual(12 + 40 + SYNC_PAGE_RANGES * 24);
      const r = new BinaryReader(first.payload, 'sync');
      r.i32('ret');
      expect(r.u16('status')).toBe(Status.OK);
      r.u16('reserved');
      expect(r.u64n('seq')).toBe(100_000);
      r.u64n('previous');
      const deltaCount = r.u64n('delta');
      const stateCount = r.u64n('state');
      expect(deltaCount).toBe(100_000);
      expect(stateCount).toBe(200_000);
      let cursor = r.u32('cursor');
      expect(cursor).not.toBe(0);
      let total = r.u32('count');
      readRanges(r, total);
      // Meanwhile, another client is answered.
      expect((await b.queryVm(1)).lastSyncSeq).toBe(100_000);
      let pages = 1;
      while (cursor !== 0) {
        raw.send(MessageType.SYNC_NEXT, 2 + pages, new BinaryWriter().u32(cursor).u32(0).finish());
        const f = (await raw.next())!;
        expect(f.payload.length + FRAME_HEADER_BYTES).toBeLessThanOrEqual(HOST_FRAME.maxPayload);
        const p = new BinaryReader(f.payload, 'page');
        p.i32('ret');
        expect(p.u16('status')).toBe(Status.OK);
        p.u16('reserved');
        cursor = p.u32('cursor');
        const n = p.u32('count');
        readRanges(p, n);
        total += n;
        pages++;
      }
      expect(total).toBe(deltaCount + stateCount);
      expect(pages).toBe(Math.ceil(total / SYNC_PAGE_RANGES));
      // A finished cursor is gone.
      raw.send(MessageType.SYNC_NEXT, 99, new BinaryWriter().u32(1).u32(0).finish());
      expect(RawConnection.status((await raw.next())!)).toBe(Status.UNKNOWN_CURSOR);
      raw.socket.destroy();

      // The client follows the cursor itself: delta and state as a local model says.
      const model = new PageStateMap(1 << 20);
      for (let j = 0; j < 100_000; j++) model.apply(2 * j, 1, false);
      const before = model.clone();
      await a.hypercallBatch(1, [call(0, 200_000, true), call(500_000, 10, false)]);
      model.apply(0, 200_000, true);
      model.apply(500_000, 10, false);
      const s = await a.sync(1);
      expect(s.delta).toEqual(before.diff(model));
      expect(s.state.equals(model)).toBe(true);
      await a.close();
      await b.close();
    } finally {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  });
});

describe('bounded memory', () => {
  it('a client that sends but never reads stops being read; the server stays small and answers others', async () => {
    const dir = tempDir();
    const socket = join(dir, 'host.sock');
    const serve = await startServe(join(dir, 'host.db'), socket, ['--quiet']);
    try {
      const a = await HostServiceClient.connect(socket);
      await a.registerVm(1, 1 << 20);
      await fragment(a, 1, 50_000); // QUERY_RANGES of everything: a 2.4 MB reply
      const before = vmRssKiB(serve.child.pid!, 'VmRSS');
      const greedy = await RawConnection.connect(socket);
      greedy.socket.pause(); // never reads
      const req = new BinaryWriter().u32(1).u32(1_000_000).u64(0).finish();
      for (let i = 0; i < 400; i++) greedy.send(MessageType.QUERY_RANGES, i + 1, req);
      // 400 × 2.4 MB of replies would be ~960 MB; the server stops reading after the first ones.
      for (let i = 0; i < 20; i++) expect((await a.queryVm(1)).rangeCount).toBe(100_000);
      const grown = vmRssKiB(serve.child.pid!, 'VmHWM') - before;
      expect(grown).toBeLessThan(200 * 1024);
      greedy.socket.destroy();
      await a.close();
    } finally {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  });

  it('partial frames past --max-memory / 4 get their client disconnected with OVERLOADED', async () => {
    const dir = tempDir();
    const socket = join(dir, 'host.sock');
    const serve = await startServe(join(dir, 'host.db'), socket, ['--quiet', '--max-memory', '64M']);
    try {
      const hog = await RawConnection.connect(socket);
      const header = Buffer.alloc(FRAME_HEADER_BYTES);
      header.writeUInt32LE(HOST_FRAME.magic, 0);
      header.writeUInt16LE(HOST_FRAME.version, 4);
      header.writeUInt16LE(MessageType.QUERY_VM, 6);
      header.writeUInt32LE(1, 8);
      header.writeUInt32LE(60 * 2 ** 20, 12);
      hog.socket.write(header);
      hog.socket.write(Buffer.alloc(20 * 2 ** 20));
      const reason = await hog.next();
      expect(reason?.type).toBe(TYPE_PROTOCOL_ERROR);
      expect(RawConnection.status(reason!)).toBe(Status.OVERLOADED);
      expect(await hog.next()).toBeUndefined(); // closed
      const c = await HostServiceClient.connect(socket);
      expect(await c.listVms()).toEqual([]);
      await c.close();
    } finally {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  });
});
