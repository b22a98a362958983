/**
 * Acknowledgment never precedes its commit (docs/design.md §6), proven
 * deterministically: the store's commit blocks until a client running on
 * another thread has read everything the socket delivered; no OK may be
 * among it. A failed commit answers INTERNAL and changes nothing.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { BinaryWriter } from '../../src/common/binary.js';
import { encodeFrame } from '../../src/common/frames.js';
import { encodeAttributes, KVM_HC_MAP_GPA_RANGE, mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient, ServiceFailedError } from '../../src/host/service-client.js';
import { HOST_FRAME, MessageType, Status } from '../../src/host/service-protocol.js';
import { HostService } from '../../src/host/service-server.js';
import { tempDir } from '../support/tmp.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

const ENTERED = 0;
const RELEASE = 1;
const OK_BEFORE_COMMIT = 2;

/**
 * The client thread: sends the frames, waits until the server is inside its
 * commit, drains every byte already delivered (three event-loop turns poll
 * the socket), records how many OK replies it saw, then lets the commit
 * finish and waits for the rest.
 */
const CLIENT = `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const flags = new Int32Array(workerData.flags);
const socket = net.connect(workerData.path);
let buf = Buffer.alloc(0);
let ok = 0, other = 0;
socket.on('data', (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 20 && buf.length >= 20 + buf.readUInt32LE(12)) {
    const len = buf.readUInt32LE(12);
    const status = buf.readUInt16LE(20 + 4);
    if (status === 0) ok++; else other++;
    buf = buf.subarray(20 + len);
  }
  if (ok + other === workerData.count) { socket.end(); parentPort.postMessage({ ok, other }); }
});
socket.on('connect', async () => {
  socket.write(Buffer.from(workerData.frames));
  Atomics.wait(flags, ${ENTERED}, 0);
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  Atomics.store(flags, ${OK_BEFORE_COMMIT}, ok);
  Atomics.store(flags, ${RELEASE}, 1);
  Atomics.notify(flags, ${RELEASE});
});
`;

async function service() {
  const dir = tempDir();
  const store = CbitStore.open(join(dir, 'host.db'));
  store.registerVm(1, 4096);
  const socketPath = join(dir, 'host.sock');
  const svc = await HostService.start({ store, socketPath });
  cleanup.push(() => store.close());
  cleanup.push(() => svc.stop());
  return { store, socketPath, dbPath: join(dir, 'host.db') };
}

function hypercallFrames(count: number): Buffer {
  return Buffer.concat(
    Array.from({ length: count }, (_, i) =>
      encodeFrame(
        HOST_FRAME,
        MessageType.HYPERCALL,
        i + 1,
        new BinaryWriter()
          .u32(1)
          .u32(0)
          .u64(KVM_HC_MAP_GPA_RANGE)
          .u64(BigInt(i) << 12n)
          .u64(1)
          .u64(encodeAttributes(false))
          .finish(),
      ),
    ),
  );
}

describe('no OK precedes its commit', () => {
  it('while the commit blocks, the client has received no OK; after it returns, every call is OK and durable', async () => {
    const { store, socketPath } = await service();
    const flags = new Int32Array(new SharedArrayBuffer(12));
    const commit = store.commit.bind(store);
    let blocked = 0;
    store.commit = () => {
      if (store.hasPending && blocked++ === 0) {
        Atomics.store(flags, ENTERED, 1);
        Atomics.notify(flags, ENTERED);
        // Block this thread (the service's) until the client thread has looked.
        Atomics.wait(flags, RELEASE, 0);
      }
      commit();
    };
    const count = 50;
    const worker = new Worker(CLIENT, {
      eval: true,
      workerData: { flags: flags.buffer, path: socketPath, frames: hypercallFrames(count), count },
    });
    cleanup.push(() => worker.terminate().then(() => {}));
    const result = await new Promise<{ ok: number; other: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    expect(blocked).toBeGreaterThan(0);
    expect(Atomics.load(flags, OK_BEFORE_COMMIT)).toBe(0);
    expect(result).toEqual({ ok: count, other: 0 });
    expect(store.info(1).lastSeq).toBe(count);
    expect([...store.changes(1)]).toHaveLength(count);
  });

  it('a commit that fails answers INTERNAL to every held call and leaves the state unchanged', async () => {
    const { socketPath, dbPath } = await service();
    // A real failing commit: a trigger (added through a second connection) aborts the segment insert.
    const other = new Database(dbPath);
    other.exec(
      "CREATE TRIGGER fail_commit BEFORE INSERT ON change_segments BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END",
    );
    const c = await HostServiceClient.connect(socketPath);
    cleanup.push(() => c.close());
    const hc = (i: number) => mapGpaRangeCall(i, 1, false);
    const out = await Promise.all(
      Array.from({ length: 5 }, (_, i) => c.hypercall(1, hc(i)).catch((e: Error) => e)),
    );
    for (const o of out) {
      expect(o).toBeInstanceOf(ServiceFailedError);
      expect((o as ServiceFailedError).status).toBe(Status.INTERNAL);
      expect((o as Error).message).toMatch(/commit failed, changes not applied: .*disk full \(injected\)/);
    }
    expect(await c.queryVm(1)).toMatchObject({ lastSeq: 0, sharedPages: 0 });
    other.exec('DROP TRIGGER fail_commit');
    other.close();
    expect(await c.hypercall(1, hc(9))).toEqual({ ret: 0, seq: 1 });
  });
});
