import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import type { StateRange } from '../../src/common/ranges.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { startServe } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

const NPAGES = 1 << 20;

function changeStream(seed: number, count: number): StateRange[] {
  let s = seed;
  const out: StateRange[] = [];
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const npages = s % 10 === 0 ? 512 : 1;
    out.push({ gfn: (s >>> 4) % (NPAGES - 512), npages, encrypted: (s & 1) === 1 });
  }
  return out;
}

async function allRanges(c: HostServiceClient, vm: number): Promise<StateRange[]> {
  const out: StateRange[] = [];
  let from = 0;
  for (;;) {
    const page = await c.queryRanges(vm, from, 10_000);
    out.push(...page.ranges);
    if (page.next === 0) return out;
    from = page.next;
  }
}

describe('sevtrack serve survives kill -9 with exactly the acknowledged state', () => {
  it('streams changes, is SIGKILLed mid-stream, restarts, and holds every acknowledged change and nothing invented', async () => {
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const socket = join(dir, 'host.sock');
    const sent = changeStream(42, 200_000);
    const first = await startServe(db, socket, ['--quiet']);
    const client = await HostServiceClient.connect(socket);
    await client.registerVm(1, NPAGES);

    let next = 0;
    let maxAckedSeq = 0;
    let killed = false;
    const BATCH = 64;
    const inflight = new Set<Promise<void>>();
    // Pipeline batches; after 300 acknowledged batches, kill the service with more in flight.
    while (!killed && next < sent.length) {
      const batch = sent.slice(next, next + BATCH);
      next += batch.length;
      const p: Promise<void> = client
        .hypercallBatch(
          1,
          batch.map((c) => mapGpaRangeCall(c.gfn, c.npages, c.encrypted)),
        )
        .then(
          (replies) => {
            for (const r of replies) {
              expect(r.ret).toBe(0);
              maxAckedSeq = Math.max(maxAckedSeq, r.seq!);
            }
          },
          () => {},
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
      if (inflight.size >= 8) await Promise.race(inflight);
      if (maxAckedSeq >= 300 * BATCH && !killed) {
        first.child.kill('SIGKILL');
        killed = true;
      }
    }
    await Promise.allSettled([...inflight]);
    expect(killed).toBe(true);
    expect((await first.exited).signal).toBe('SIGKILL');
    expect(maxAckedSeq).toBeGreaterThanOrEqual(300 * BATCH);

    const second = await startServe(db, socket, ['--quiet']);
    const again = await HostServiceClient.connect(socket);
    const vm = await again.queryVm(1);
    // Every acknowledged change is there; what is there is a prefix of what was sent.
    expect(vm.lastSeq).toBeGreaterThanOrEqual(maxAckedSeq);
    expect(vm.lastSeq).toBeLessThanOrEqual(next);
    const model = new PageStateMap(NPAGES);
    for (const c of sent.slice(0, vm.lastSeq)) model.apply(c.gfn, c.npages, c.encrypted);
    expect(await allRanges(again, 1)).toEqual([...model.ranges()]);
    await again.close();
    second.child.kill('SIGTERM');
    expect((await second.exited).code).toBe(0);
  });
});
