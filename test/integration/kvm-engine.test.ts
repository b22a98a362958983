/**
 * The migration engine over two real VMs (the kvm backend behind
 * MigratableMemory and SourceGuest): the same MigrationSource and
 * MigrationDestination as the sim backend, the kvm memory model in the page
 * pipeline, the vCPU state in two pages per vCPU, the destination VM resumed
 * from it. `safe` verifies and the destination's counter page keeps
 * advancing; `naive` is caught by the engine's own verification (for a
 * seed where a churn buffer was mid-conversion at the first sync) and the
 * source guest runs on. Skips, naming the reason, without a usable /dev/kvm.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { memoryChannelPair } from '../../src/migration/channel.js';
import { DESTINATION_VM } from '../../src/migration/destination-tracker.js';
import { bootKvmSource } from '../../src/migration/kvm-guests.js';
import { receiveGuest } from '../../src/migration/run-destination.js';
import { DEFAULT_PARAMS, type MigrateParams, sourceOptions } from '../../src/migration/run-migration.js';
import type { RunningGuest } from '../../src/migration/running-guest.js';
import { MigrationSource } from '../../src/migration/source.js';
import { MIGRATION_FRAME, type Protocol } from '../../src/migration/stream.js';
import { kvmSkipReason } from '../../src/vmm/kvm/availability.js';
import { guestCbits } from '../../src/vmm/kvm/kvm-memory.js';
import type { KvmSourceGuest } from '../../src/vmm/kvm/source-guest.js';
import { tempDir } from '../support/tmp.js';
import { until } from '../vmm/kvm/support.js';

const NPAGES = 2048; // 8 MiB
const skip = kvmSkipReason();
if (skip) console.warn(`kvm tests skipped: ${skip}`);

/**
 * On a loaded machine the stream may not outrun even a paced guest, so the
 * test pauses after a few rounds whatever the estimate (the verdict, not
 * convergence, is under test).
 */
function params(protocol: Protocol, seed: number): MigrateParams {
  return {
    ...DEFAULT_PARAMS,
    backend: 'kvm',
    vcpus: 2,
    workload: 'churn',
    protocol,
    seed,
    warmupMs: 30,
    maxRounds: 4,
    onNoConvergence: 'pause',
  };
}

/** One migration between two VMs in this process; the destination's running guest is handed to `whileRunning`. */
async function migrate(
  p: MigrateParams,
  whileRunning?: (running: RunningGuest<KvmSourceGuest>) => Promise<void>,
) {
  const store = CbitStore.open(join(tempDir(), 'source.db'));
  store.registerVm(1, NPAGES, { initialEncrypted: true });
  const booted = await bootKvmSource(p, NPAGES, store, 1);
  const [a, b] = memoryChannelPair(MIGRATION_FRAME);
  const received = receiveGuest({ backend: 'kvm', peerTimeoutMs: 30_000, psp: p.psp }, b);
  received.catch(() => {});
  try {
    const summary = await new MigrationSource(sourceOptions(p, booted.guest, store, 1, a)).run();
    const { result, running, report } = await received;
    try {
      if (running && whileRunning) await whileRunning(running);
    } finally {
      await running?.stop();
    }
    return { summary, result, report, sourcePaused: booted.guest.paused };
  } finally {
    a.close();
    await booted.stop();
    store.close();
  }
}

describe('kvm: the migration engine between two real VMs', () => {
  it.skipIf(skip)(
    'safe: verified; the destination VM runs on from the migrated vCPU state, its counter page advancing and its exits going into its tracker',
    async () => {
      let advanced = false;
      let tableMatchesTracker = false;
      const r = await migrate(params('safe', 3), async (running) => {
        const vm = running.guest.guest;
        const at = [0, 1].map((v) => vm.control.counters(v).progress);
        const seqAt = running.tracker.store.info(DESTINATION_VM).lastSeq;
        await until(
          () => [0, 1].every((v) => vm.control.counters(v).progress > at[v] + 50n),
          'the destination guest to make progress',
        );
        // churn keeps converting pages at the destination, through its exits into its own tracker.
        await until(() => {
          running.guest.guest.drain();
          return running.tracker.store.info(DESTINATION_VM).lastSeq > seqAt + 20;
        }, 'conversions at the destination');
        advanced = true;
        await running.guest.pause();
        const table = guestCbits(vm);
        const state = running.tracker.store.state(DESTINATION_VM);
        tableMatchesTracker = Array.from({ length: NPAGES }, (_, g) => g).every(
          (g) => state.isEncrypted(g) === table.test(g),
        );
      });
      expect(r.summary.message).toMatch(/all equal/);
      expect(r.summary.verified).toBe(true);
      expect(r.summary.comparedPages).toBe(NPAGES);
      expect(r.summary.sealedPages).toBeGreaterThan(0);
      expect(r.summary.rawPages).toBeGreaterThan(0);
      expect(r.summary.trackerMismatchGfns).toEqual([]);
      expect(r.report!.heartbeatAfter).toBeGreaterThan(r.report!.heartbeatAtResume);
      expect(r.summary.generationAfter).toBe(r.summary.generationBefore + 1);
      expect(advanced).toBe(true);
      expect(tableMatchesTracker).toBe(true);
    },
  );

  it.skipIf(skip)(
    'naive: for some seed the engine reports corrupted pages (those mid-conversion at the first sync), and the source guest runs on',
    async () => {
      // naive sends every page from the c-bit state of the first sync. churn
      // shares a buffer in one step and takes it back in a later one, so the
      // buffers whose perspective changed after that sync end up sent from
      // the wrong one: how many is up to the vCPUs' timing, so a few seeds
      // are tried.
      const runs: Awaited<ReturnType<typeof migrate>>[] = [];
      for (let seed = 1; seed <= 6; seed++) {
        const r = await migrate({ ...params('naive', seed), vcpus: 4 });
        runs.push(r);
        if (!r.summary.verified) break;
      }
      const r = runs[runs.length - 1];
      expect(r.summary.verified).toBe(false);
      expect(r.summary.resumed).toBe(false);
      expect(r.summary.mismatchedPages).toBeGreaterThan(0);
      // The helper's own pages (shared from boot, before the first sync) arrive intact.
      expect(Math.min(...r.summary.mismatchedGfns)).toBeGreaterThanOrEqual(64);
      // The final state (the first sync's) differs from the guest's table exactly there.
      expect(r.summary.trackerMismatchGfns.length).toBeGreaterThan(0);
      expect(r.result.memory).toBeUndefined();
      expect(r.sourcePaused).toBe(false);
    },
  );
});
