/**
 * Guest side: page writes per second per vCPU thread (encrypted through the
 * native XTS batch vs shared plaintext, against a node:crypto cipher per page
 * and a plain page copy), and conversions per second through each transport
 * (a vCPU worker's exits served in-process or by `sevtrack serve`), against
 * direct synchronous store calls with one fsync'd commit each.
 */
import { createCipheriv } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeAttributes, KVM_HC_MAP_GPA_RANGE } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type HypercallBackend, InProcessBackend, SocketBackend } from '../../src/vmm/hypercall-backend.js';
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
      baseline: viaNode,
      baselineName: 'node:crypto XTS per page',
    });
    report({
      name: 'guest writes, shared page',
      value: shared,
      unit: 'pages/s',
      baseline: copy,
      baselineName: 'plain page copy',
    });

    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
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
      const baselineName = 'direct call, commit each';

      for (const synchronous of ['FULL', 'NORMAL'] as const) {
        const store = CbitStore.open(join(dir, `inproc-${synchronous}.db`), { synchronous });
        store.registerVm(1, NPAGES);
        report({
          name: `conversions, 1 vCPU boot storm, in-process, synchronous=${synchronous}`,
          value: await stormRate(new InProcessBackend(store), 1),
          unit: 'conv/s',
          baseline: directRate,
          baselineName,
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
        baseline: directRate,
        baselineName,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
