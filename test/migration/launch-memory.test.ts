/**
 * A sim guest's memory is resident from launch (run-migration.ts
 * launchMemory), as an SEV guest's pinned memory is: an idle guest that
 * never writes most of its pages still holds all of them before it runs, so
 * a migration source reading them takes no first-touch fault.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { bootGuest, DEFAULT_PARAMS } from '../../src/migration/run-migration.js';
import { rssAnon } from '../support/resident.js';

describe('a sim guest at launch', () => {
  it('holds every page resident before it runs, though the idle workload writes almost none', async () => {
    const npages = 65_536; // 256 MiB: more than the vCPU threads' own memory could account for
    const before = rssAnon();
    const booted = await bootGuest(
      { ...DEFAULT_PARAMS, workload: 'idle', warmupMs: 0, guestEncrypted: false },
      npages,
    );
    try {
      expect(rssAnon() - before).toBeGreaterThan(0.9 * npages * PAGE_SIZE);
      // The idle guest wrote only its kernel area, a few pages together: even
      // were each in a huge page of its own, they would hold 2 MiB apiece,
      // far from the 230 MiB above. The residency is the launch's.
      expect(booted.guest.memory.written.count()).toBeLessThan(32);
    } finally {
      await booted.stop();
    }
  });

  it('a cancel during launch ends it within a step, with the reason, before the guest runs', async () => {
    const controller = new AbortController();
    const reason = new Error('cancelled at launch');
    const npages = 262_144; // 1 GiB: over a hundred steps
    const before = rssAnon();
    const booting = bootGuest({ ...DEFAULT_PARAMS, workload: 'idle', signal: controller.signal }, npages);
    setImmediate(() => controller.abort(reason));
    await expect(booting).rejects.toBe(reason);
    // Stopped within a step, not after making the whole guest resident.
    expect(rssAnon() - before).toBeLessThan(0.25 * npages * PAGE_SIZE);
  });
});
