/**
 * sysgenid: what a generation check costs, and how long a bump takes to be
 * acknowledged by everyone.
 *
 * Probe: one check of the generation through the mapped counter page (one
 * load in a native loop, what a C client does), against a 4-byte pread of the
 * same file and a GET round trip over the service socket, all in this run.
 * Bump to all acknowledged: Overseer.bumpAndWait with 1, 100 and 1000 tracked
 * simulated watchers (two worker threads, each watcher reseeds its pool and
 * acknowledges), against the same bump with no watcher (the overseer's own
 * round trips: the floor of the work).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeAddon } from '../../src/common/native.js';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { Overseer } from '../../src/sysgenid/overseer.js';
import { SysgenidService } from '../../src/sysgenid/service.js';
import { startWatchers } from '../../src/sysgenid/watchers.js';
import type { BenchGroup } from '../harness.js';

/** ns per check of a native probe loop, the best of 5 runs. */
function probeNs(path: string, mode: 'map' | 'pread', iterations: number): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 5; i++) {
    best = Math.min(best, nativeAddon().sysgenidProbeLoop(path, mode, iterations).elapsedNs / iterations);
  }
  return best;
}

/** ns per sequential GET round trip over the socket. */
async function roundTripNs(socket: string, count: number): Promise<number> {
  const c = await SysgenidClient.connect(socket);
  try {
    for (let i = 0; i < 200; i++) await c.get(); // warm-up
    const start = process.hrtime.bigint();
    for (let i = 0; i < count; i++) await c.get();
    return Number(process.hrtime.bigint() - start) / count;
  } finally {
    await c.close();
  }
}

/** Median ms from bump to every tracked watcher acknowledged, over `runs` bumps. */
async function bumpToAckedMs(overseer: Overseer, runs: number, expectAcked: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await overseer.bumpAndWait({ watcherTimeoutMs: 60_000 });
    if (r.watchersAcked !== expectAcked || r.timedOut) {
      throw new Error(
        `expected ${expectAcked} acknowledgements, got ${r.watchersAcked} (timed out: ${r.timedOut})`,
      );
    }
    times.push(r.timeToAvailableMs);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export const sysgenidGroup: BenchGroup = {
  name: 'sysgenid',
  description: 'generation probe (mapped page vs pread vs socket) and bump-to-all-acknowledged latency',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-sysgenid-'));
    const socket = join(dir, 'sysgenid.sock');
    const counterFile = join(dir, 'sysgenid');
    const service = await SysgenidService.start({ socketPath: socket, counterFile });
    try {
      const mapNs = probeNs(counterFile, 'map', 20_000_000);
      const preadNs = probeNs(counterFile, 'pread', 200_000);
      const socketNs = await roundTripNs(socket, 5_000);
      const baselineName = 'pread of the counter file';
      report({
        name: 'probe via the mapped page',
        value: mapNs,
        unit: 'ns/check',
        baseline: preadNs,
        baselineName,
      });
      report({
        name: 'probe via a socket GET round trip',
        value: socketNs,
        unit: 'ns/check',
        baseline: preadNs,
        baselineName,
      });

      const overseer = await Overseer.connect(socket);
      try {
        const floor = await bumpToAckedMs(overseer, 15, 0);
        for (const n of [1, 100, 1000]) {
          const fleet = await startWatchers(n, { socketPath: socket, threads: 2 });
          try {
            report({
              name: `bump to all acknowledged, ${n} watcher${n === 1 ? '' : 's'}`,
              value: await bumpToAckedMs(overseer, n >= 1000 ? 5 : 9, n),
              unit: 'ms (median)',
              baseline: floor,
              baselineName: 'the same bump with no watcher',
            });
          } finally {
            await fleet.close();
          }
        }
      } finally {
        await overseer.close();
      }
    } finally {
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
