/**
 * Bounded memory of `sevtrack serve`: its peak RSS (VmHWM) after 20M changes
 * with no sync, against its peak after the first 2M of them (the same run: a
 * bound that does not grow with the number of changes gives a ratio near 1),
 * and its peak while a client sends QUERY_RANGES for 20 s and never reads,
 * against its peak before that client came.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BinaryWriter } from '../../src/common/binary.js';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { MessageType } from '../../src/host/service-protocol.js';
import { RawConnection, startServe } from '../../test/support/serve.js';
import type { BenchGroup } from '../harness.js';
import { realisticChanges } from './host-ingest.js';

const NPAGES = 2 ** 20; // 4 GiB guest
const BATCH = 65_536;

function peakMiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmHWM:'))!;
  return Number(line.split(/\s+/)[1]) / 1024;
}

export const hostMemoryGroup: BenchGroup = {
  name: 'host-memory',
  description: 'peak RSS of serve: 20M changes without a sync; a client that never reads',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const socket = join(dir, 'host.sock');
      const serve = await startServe(join(dir, 'host.db'), socket, ['--quiet', '--synchronous', 'normal']);
      const pid = serve.child.pid!;
      try {
        const c = await HostServiceClient.connect(socket);
        await c.registerVm(1, NPAGES);
        let sent = 0;
        let at2M = 0;
        for (let seed = 1; sent < 20_000_000; seed++) {
          const calls = realisticChanges(BATCH, seed, NPAGES).map((x) =>
            mapGpaRangeCall(x.gfn, x.npages, x.encrypted),
          );
          await c.hypercallBatch(1, calls);
          sent += BATCH;
          if (at2M === 0 && sent >= 2_000_000) at2M = peakMiB(pid);
        }
        report({
          name: 'peak RSS after 20M changes without a sync (MiB, lower is better)',
          value: peakMiB(pid),
          unit: 'MiB',
          baseline: at2M,
          baselineName: 'peak after the first 2M',
        });

        const before = peakMiB(pid);
        const greedy = await RawConnection.connect(socket);
        greedy.socket.pause();
        const req = new BinaryWriter().u32(1).u32(1_000_000).u64(0).finish();
        const stopAt = Date.now() + 20_000;
        let id = 1;
        while (Date.now() < stopAt) {
          if (greedy.socket.writableLength < 2 ** 20) greedy.send(MessageType.QUERY_RANGES, id++, req);
          await c.queryVm(1); // another client keeps being answered
          await new Promise((r) => setImmediate(r));
        }
        report({
          name: 'peak RSS with a client that never reads, 20 s (MiB, lower is better)',
          value: peakMiB(pid),
          unit: 'MiB',
          baseline: before,
          baselineName: 'peak before it came',
        });
        greedy.socket.destroy();
        await c.close();
      } finally {
        serve.child.kill('SIGTERM');
        await serve.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
