/**
 * Guest side: page writes per second per vCPU thread (encrypted through the
 * native XTS batch vs shared plaintext, against a node:crypto cipher per page
 * and a plain page copy); conversions per second through each transport
 * (a vCPU worker's exits served in-process or by `sevtrack serve`), against
 * direct synchronous store calls with one fsync'd commit each; and the
 * latency of one conversion exit (the guest's hypercall until it returns)
 * through the vCPU's ring while the tracker drains it, p50 and p99, against
 * the bare shared-memory operations of a ring append measured on the same
 * thread (the limit of that work) and, for scale, a cross-thread Atomics
 * round trip (what any exit that waits for another thread costs at least).
 */
import { createCipheriv } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { encodeAttributes, KVM_HC_MAP_GPA_RANGE } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type HypercallBackend, InProcessBackend, SocketBackend } from '../../src/vmm/hypercall-backend.js';
import { ExitDrainer } from '../../src/vmm/sim/exit-drainer.js';
import { createExitRings, RingConsumer } from '../../src/vmm/sim/exit-rings.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { VcpuPool } from '../../src/vmm/sim/vcpu-pool.js';
import { withServe } from '../../test/support/serve.js';
import { type BenchGroup, opsPerSecond } from '../harness.js';

const NPAGES = 65536; // 256 MiB

async function stormRate(backend: HypercallBackend, vm: number): Promise<number> {
  const memory = GuestMemory.create(NPAGES);
  const start = process.hrtime.bigint();
  const pool = VcpuPool.start({ memory, backend, vm, vcpus: 1, workload: 'boot', seed: 1 });
  await pool.waitSetup();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const stats = await pool.stop();
  return stats.conversions / seconds;
}

const EXITS = 20_000;

/**
 * A vCPU thread's side of the latency measure: EXITS conversions through
 * ExitPort (validate, append to the ring, return), each timed; then the bare
 * ring append (a ticket Atomics.add and a publishing Atomics.store) timed the
 * same way; then the guest side of a cross-thread Atomics round trip.
 */
const latencyWorker = (exitUrl: string, ringsUrl: string, abiUrl: string, fromSource: boolean) => `
(${fromSource} ? import('tsx/esm/api').then((tsx) => tsx.register()) : Promise.resolve()).then(async () => {
  const { parentPort, workerData } = await import('node:worker_threads');
  const { ExitPort } = await import(${JSON.stringify(exitUrl)});
  const { RingProducer } = await import(${JSON.stringify(ringsUrl)});
  const abi = await import(${JSON.stringify(abiUrl)});
  const { rings, n, npages, pingPong } = workerData;
  const port = new ExitPort(
    { slot: new SharedArrayBuffer(32), features: 0, forwardsHypercalls: true, guestPages: npages },
    new RingProducer(rings, 0),
    parentPort,
  );
  const ns = (a, b) => Number(b - a);
  const exit = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const a2 = abi.encodeAttributes((i & 1) === 0);
    const t0 = process.hrtime.bigint();
    port.hypercall(abi.KVM_HC_MAP_GPA_RANGE, BigInt((i % npages) * 4096), 1n, a2);
    exit[i] = ns(t0, process.hrtime.bigint());
  }
  const scratch = new Int32Array(new SharedArrayBuffer(64));
  const bare = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    Atomics.add(scratch, 0, 1);
    scratch[4] = i; scratch[5] = 1; scratch[6] = 0;
    Atomics.store(scratch, 1, i);
    bare[i] = ns(t0, process.hrtime.bigint());
  }
  const pp = new Int32Array(pingPong);
  const trip = new Float64Array(2000);
  for (let i = 0; i < trip.length; i++) {
    const t0 = process.hrtime.bigint();
    Atomics.store(pp, 0, 1); Atomics.notify(pp, 0);
    while (Atomics.load(pp, 0) !== 0) Atomics.wait(pp, 0, 1);
    trip[i] = ns(t0, process.hrtime.bigint());
  }
  Atomics.store(pp, 1, 1); Atomics.store(pp, 0, 1); Atomics.notify(pp, 0);
  parentPort.postMessage({ exit, bare, trip });
});`;

function percentile(values: Float64Array, p: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Conversion exit latency through the ring, in µs, with its limits. */
async function exitLatency(
  dir: string,
): Promise<{ exit: Float64Array; bare: Float64Array; trip: Float64Array }> {
  const store = CbitStore.open(join(dir, 'latency.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, NPAGES);
  const rings = createExitRings(1);
  const drainer = new ExitDrainer(new RingConsumer(rings), new InProcessBackend(store), 1, (e) => {
    throw e;
  });
  const pingPong = new SharedArrayBuffer(16);
  const pp = new Int32Array(pingPong);
  // From source under tsx (.ts) or from the compiled build (.js).
  const fromSource = import.meta.url.endsWith('.ts');
  const url = (rel: string) => new URL(fromSource ? rel : rel.replace(/\.ts$/, '.js'), import.meta.url).href;
  const worker = new Worker(
    latencyWorker(
      url('../../src/vmm/sim/vcpu-exit.ts'),
      url('../../src/vmm/sim/exit-rings.ts'),
      url('../../src/common/kvm-abi.ts'),
      fromSource,
    ),
    { eval: true, workerData: { rings, n: EXITS, npages: NPAGES, pingPong } },
  );
  const result = new Promise<{ exit: Float64Array; bare: Float64Array; trip: Float64Array }>(
    (resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    },
  );
  // The host side of the round trip: answer each ping on this thread, off the event loop's timers.
  const answer = async () => {
    for (;;) {
      const w = (
        Atomics as unknown as {
          waitAsync: (a: Int32Array, i: number, v: number) => { value: Promise<string> | string };
        }
      ).waitAsync(pp, 0, 0);
      await w.value;
      if (Atomics.load(pp, 1) === 1) return;
      Atomics.store(pp, 0, 0);
      Atomics.notify(pp, 0);
    }
  };
  const answering = answer();
  const r = await result;
  await answering;
  await worker.terminate();
  await drainer.stop();
  if (store.info(1).lastSeq !== EXITS)
    throw new Error(`the tracker holds ${store.info(1).lastSeq} of ${EXITS} changes`);
  store.close();
  return r;
}

export const guestGroup: BenchGroup = {
  name: 'guest',
  description: 'guest page writes per vCPU and conversions per transport',
  async run(report) {
    const mem = GuestMemory.create(4096);
    const data = new Uint8Array(4096).fill(1);
    mem.setCbits(2048, 2048, false);
    let g = 0;
    const enc =
      opsPerSecond(() => {
        for (let i = 0; i < 256; i++) mem.writePage(g++ & 2047, data);
      }) * 256;
    const shared =
      opsPerSecond(() => {
        for (let i = 0; i < 256; i++) mem.writePage(2048 + (g++ & 2047), data);
      }) * 256;
    const key = mem.key;
    const tweak = Buffer.alloc(16);
    const viaNode =
      opsPerSecond(() => {
        for (let i = 0; i < 256; i++) {
          tweak.writeUInt32LE((g++ & 2047) * 4096, 0);
          const c = createCipheriv('aes-128-xts', key, tweak);
          mem.bytes.set(c.update(data), 0);
          c.final();
        }
      }) * 256;
    const copy =
      opsPerSecond(() => {
        for (let i = 0; i < 256; i++) mem.bytes.set(data, (g++ & 2047) * 4096);
      }) * 256;
    report({
      name: 'guest writes, encrypted page (native XTS)',
      value: enc,
      unit: 'pages/s',
      limit: viaNode,
      limitName: 'node:crypto XTS per page',
    });
    report({
      name: 'guest writes, shared page',
      value: shared,
      unit: 'pages/s',
      limit: copy,
      limitName: 'plain page copy',
    });

    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const lat = await exitLatency(dir);
      for (const p of [0.5, 0.99] as const) {
        const label = p === 0.5 ? 'p50' : 'p99';
        report({
          name: `conversion exit latency ${label}, through the vCPU's ring (µs, lower is better; before the rings ~178 µs)`,
          value: percentile(lat.exit, p) / 1000,
          unit: 'µs',
          limit: percentile(lat.bare, p) / 1000,
          limitName: 'bare ring append (Atomics.add + stores), same thread',
        });
      }
      report({
        name: 'cross-thread Atomics round trip p50 (µs; the floor of any exit that waits for another thread)',
        value: percentile(lat.trip, 0.5) / 1000,
        unit: 'µs',
        limit: percentile(lat.exit, 0.5) / 1000,
        limitName: 'conversion exit through the ring, p50',
      });
      // Baseline: synchronous store calls with a commit (fsync) each.
      const direct = CbitStore.open(join(dir, 'direct.db'));
      direct.registerVm(1, NPAGES);
      let n = 0;
      const start = process.hrtime.bigint();
      for (; n < 2000; n++) {
        direct.applyHypercall(1, KVM_HC_MAP_GPA_RANGE, BigInt(n) << 12n, 1n, encodeAttributes(false));
        direct.commit();
      }
      const directRate = n / (Number(process.hrtime.bigint() - start) / 1e9);
      direct.close();
      const limitName = 'direct call, commit each';

      for (const synchronous of ['FULL', 'NORMAL'] as const) {
        const store = CbitStore.open(join(dir, `inproc-${synchronous}.db`), { synchronous });
        store.registerVm(1, NPAGES);
        report({
          name: `conversions, 1 vCPU boot storm, in-process, synchronous=${synchronous}`,
          value: await stormRate(new InProcessBackend(store), 1),
          unit: 'conv/s',
          limit: directRate,
          limitName,
        });
        store.close();
      }

      const rate = await withServe(join(dir, 'sock.db'), join(dir, 'g.sock'), async (client) => {
        await client.registerVm(1, NPAGES);
        return stormRate(new SocketBackend(client), 1);
      });
      report({
        name: 'conversions, 1 vCPU boot storm, unix socket transport',
        value: rate,
        unit: 'conv/s',
        limit: directRate,
        limitName,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
