/**
 * The guest runs on and travels (docs/design.md, "the guest runs on after
 * resume"), at the library level: the c-bit table travels in guest memory
 * (never as a message of its own), the resumed vCPUs continue the workload
 * with their exits in the destination's tracker, which stays equal to the
 * guest's own table while the guest runs on; a chain of hops verifies each
 * one and bumps the generation once per hop, and stops at a failing hop.
 */
import { describe, expect, it } from 'vitest';
import type { FrameChannel } from '../../src/migration/channel.js';
import { memoryChannelPair } from '../../src/migration/channel.js';
import { guestHeartbeat } from '../../src/migration/destination-resume.js';
import { DESTINATION_VM } from '../../src/migration/destination-tracker.js';
import { migrateChain } from '../../src/migration/run-chain.js';
import { receiveGuest } from '../../src/migration/run-destination.js';
import {
  bootGuest,
  DEFAULT_PARAMS,
  type MigrateParams,
  sourceOptions,
} from '../../src/migration/run-migration.js';
import { MigrationSource } from '../../src/migration/source.js';
import { MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';

const P: MigrateParams = {
  ...DEFAULT_PARAMS,
  memoryBytes: 4 * 2 ** 20,
  vcpus: 2,
  workload: 'churn',
  warmupMs: 50,
  maxDowntimeMs: 1000,
};

/** Records the type of every frame the source sends. */
function recording(ch: FrameChannel, types: number[]): FrameChannel {
  return new Proxy(ch, {
    get(target, prop, receiver) {
      if (prop === 'send')
        return (type: number, payload: Uint8Array) => {
          types.push(type);
          return target.send(type, payload);
        };
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

describe('the guest runs on after resume', () => {
  it("its c-bit table travels in guest memory only; the resumed guest's exits go into the destination tracker, which stays equal to the guest's table", async () => {
    const booted = await bootGuest(P, 1024);
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const types: number[] = [];
    const received = receiveGuest({ peerTimeoutMs: 30_000, psp: P.psp, guestOpsPerMs: 32 }, b);
    received.catch(() => {});
    const summary = await new MigrationSource(
      sourceOptions(P, booted.guest, booted.store, booted.vm, recording(a, types)),
    ).run();
    const { result, running, report } = await received;
    await booted.stop();
    try {
      expect(summary.verified).toBe(true);
      expect(types).not.toContain(Msg.GUEST_PAGE_TABLES);
      expect(result.trackerMismatchGfns).toEqual([]);
      // The vCPUs run on from the migrated memory: the heartbeat moves past where it arrived.
      expect(report!.heartbeatAfter).toBeGreaterThan(report!.heartbeatAtResume);
      const { guest, tracker } = running!;
      const convertedAtResume = guest.pool.stats().conversions;
      // Let the churn convert pages on the destination, through its exits into its tracker.
      while (guest.pool.stats().conversions < convertedAtResume + 20)
        await new Promise((r) => setTimeout(r, 5));
      const before = guestHeartbeat(guest);
      await guest.pause();
      expect(guestHeartbeat(guest)).toBeGreaterThan(before - 1);
      const table = guest.memory.readPageTables(0);
      expect(table.words).toEqual(guest.memory.cbits.words); // the TLB is the table's
      const state = tracker.store.state(DESTINATION_VM);
      for (let g = 0; g < guest.memory.npages; g++) expect(state.isEncrypted(g)).toBe(table.test(g));
      expect(tracker.store.info(DESTINATION_VM).lastSeq).toBeGreaterThan(0);
    } finally {
      await running?.stop();
    }
  });

  it('a guest whose table is not in its memory is refused before resume, naming the table', async () => {
    const booted = await bootGuest(P, 1024);
    // The host scribbles over the kernel's page: the guest's own table is gone.
    // The vCPUs are parked first: a running guest rewrites its table page
    // from what it holds, which would repair the damage before it is sent.
    await booted.guest.pause();
    booted.guest.memory.hostView(0).fill(0);
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const received = receiveGuest({ peerTimeoutMs: 30_000, psp: P.psp }, b);
    received.catch(() => {});
    try {
      await expect(
        new MigrationSource(sourceOptions(P, booted.guest, booted.store, booted.vm, a)).run(),
      ).rejects.toThrow(/c-bit table did not arrive intact/);
      await expect(received).rejects.toThrow(/c-bit table/);
      // The source guest runs on (rule 6).
      expect(booted.guest.paused).toBe(false);
    } finally {
      await booted.stop();
    }
  });
});

describe('migrateChain', () => {
  it('three hops: each verified, the generation once per hop, each tracker equal to the guest table, the heartbeat carried on', async () => {
    const c = await migrateChain({ ...P, hops: 3 });
    expect(c.verified).toBe(true);
    expect(c.hops.map((h) => h.generationAfter)).toEqual([1, 2, 3]);
    expect(c.generationAfter - c.generationBefore).toBe(3);
    for (const [i, h] of c.hops.entries()) {
      expect(h.verified).toBe(true);
      expect(h.trackerMatchesGuest).toBe(true);
      expect(h.resume!.heartbeatAfter).toBeGreaterThan(h.resume!.heartbeatAtResume);
      if (i > 0) expect(h.resume!.heartbeatAtResume).toBeGreaterThan(c.hops[i - 1].resume!.heartbeatAtResume);
    }
  });

  it('stops at the first hop that fails: naive corrupts, the chain reports one hop, not verified', async () => {
    const c = await migrateChain({ ...P, hops: 3, protocol: 'naive', workload: 'mixed' });
    expect(c.verified).toBe(false);
    expect(c.hops).toHaveLength(1);
    expect(c.hops[0].resumed).toBe(false);
    expect(c.hops[0].perspectiveMismatchGfns.length + c.hops[0].mismatchedPages).toBeGreaterThan(0);
    expect(c.generationAfter).toBe(c.generationBefore);
  });
});
