/**
 * The migration log's conversions come from the tracker's drain of the vCPUs'
 * exit rings (HypercallBackend.tap), in-process and through `sevtrack serve`'s
 * socket protocol alike: every change the tracker applied is logged once,
 * with the sequence number the tracker gave it, the vCPU that made it and
 * the state it replaced, so the log alone rebuilds the tracker's state.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { VcpuPool } from '../../src/vmm/sim/vcpu-pool.js';
import { openBackend } from '../support/backends.js';
import { tempDir } from '../support/tmp.js';

const pools: VcpuPool[] = [];
afterEach(async () => {
  for (const p of pools.splice(0)) await p.stop();
});

describe('conversions tapped from the exit-ring drain', () => {
  for (const transport of ['inproc', 'unix'] as const) {
    it(`${transport}: every change once, with its seq, vCPU and old state`, async () => {
      const npages = 4096;
      const dir = tempDir();
      const store = CbitStore.open(join(dir, 'h.db'));
      store.registerVm(1, npages);
      const { backend, close } = await openBackend(transport, store, dir);
      const path = join(dir, 'm.db');
      const log = MigrationLog.create(path, {
        role: 'source',
        npages,
        vcpus: 2,
        protocol: 'safe',
        verify: 'strict',
        params: { transport },
      });
      const initial = store.state(1);
      backend.tap = log.conversionTap(initial, store.info(1).lastSeq);
      log.start({ generation: 0, migrationControl: 0 });
      const pool = VcpuPool.start({
        memory: GuestMemory.create(npages),
        backend,
        vm: 1,
        vcpus: 2,
        workload: 'churn',
        seed: 5,
        opsPerMs: 0,
        maxSteps: 300,
      });
      pools.push(pool);
      await pool.finished();
      await close();
      log.close({});

      const r = MigrationLogReader.open(path);
      const conversions = r.contents.conversions;
      // One seq per change the tracker applied, none twice (a change over runs of
      // mixed old state is split into rows sharing its seq).
      const seqs = [...new Set(conversions.map((c) => c.seq))];
      expect(seqs).toEqual(Array.from({ length: store.info(1).lastSeq }, (_, i) => i + 1));
      expect(seqs.length).toBeGreaterThan(100);
      expect([...new Set(conversions.map((c) => c.vcpu))].sort()).toEqual([0, 1]);
      // Old states chain: each row's old state is the state the rows before left.
      const rebuilt = new PageStateMap(npages, true);
      for (const c of conversions) {
        for (let g = c.gfn; g < c.gfn + c.npages; g++)
          expect(rebuilt.isEncrypted(g), `seq ${c.seq} gfn ${g}`).toBe(c.old_encrypted === 1);
        rebuilt.apply(c.gfn, c.npages, c.encrypted === 1);
      }
      expect(rebuilt.equals(store.state(1))).toBe(true);
      r.close();
      store.close();
    }, 60_000);
  }
});
