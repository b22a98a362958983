/**
 * The destination's own tracker (src/migration/destination-tracker.ts): a
 * real SQLite CbitStore recording the perspective each page arrived with,
 * the final state applied, and the checks that turn a stale perspective or
 * a state that is not the guest's own into a protocol error before resume.
 */
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { KVM_MIGRATION_READY } from '../../src/common/kvm-abi.js';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { DESTINATION_VM, DestinationTracker } from '../../src/migration/destination-tracker.js';
import { DEFAULT_PARAMS, migrateGuest } from '../../src/migration/run-migration.js';
import type { Protocol } from '../../src/migration/stream.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { tempDir } from '../support/tmp.js';

const gfns = (...g: number[]) => Float64Array.from(g);

function bits(npages: number, set: number[]): PageBitmap {
  const b = new PageBitmap(npages);
  for (const g of set) b.setRange(g, 1);
  return b;
}

describe('DestinationTracker', () => {
  it('records arrivals, flags a written page that arrived from a stale perspective, and applies the final state', () => {
    const path = join(tempDir(), 'dst.db');
    const t = DestinationTracker.open(path);
    t.begin(16);
    t.recordArrival(gfns(0, 1, 2, 3, 4, 5, 6, 7), true);
    t.recordArrival(gfns(8, 9, 10), false);
    t.endRound();
    // Page 9 arrived again, now private; page 3 arrived again shared.
    t.recordArrival(gfns(9), true);
    t.recordArrival(gfns(3), false);
    t.endRound();
    const final = new PageStateMap(16);
    final.apply(8, 1, false);
    final.apply(10, 1, false);
    final.apply(12, 2, false); // converted; 12 written since, 13 not
    const table = new PageBitmap(16);
    for (const r of final.ranges()) if (r.encrypted) table.setRange(r.gfn, r.npages);
    // Written after their last conversion: 3 (arrived shared, final private), 12 (arrived private, final shared).
    const defined = bits(16, [0, 3, 8, 9, 12]);
    expect(t.check(final, defined, table)).toEqual({
      perspectiveMismatchGfns: [3, 12],
      trackerMismatchGfns: [],
    });
    // Not written since their conversion: a stale perspective there is no error (content undefined).
    expect(t.check(final, bits(16, [0, 8]), table).perspectiveMismatchGfns).toEqual([]);
    // A final state that is not the guest's own table.
    const other = table.clone();
    other.clearRange(5, 2);
    expect(t.check(final, bits(16, []), other).trackerMismatchGfns).toEqual([5, 6]);
    t.applyFinal(final, KVM_MIGRATION_READY);
    expect(t.store.state(DESTINATION_VM).equals(final)).toBe(true);
    t.close();
    // Durable: the database holds the final state and READY.
    const store = CbitStore.open(path, { readonly: true });
    expect(store.state(DESTINATION_VM).equals(final)).toBe(true);
    expect(store.migrationControl(DESTINATION_VM)).toBe(KVM_MIGRATION_READY);
    store.close();
  });

  it('refuses a --db that already holds a migrated VM, naming the flag, and leaves it as it was', () => {
    const path = join(tempDir(), 'dst.db');
    const t = DestinationTracker.open(path);
    t.begin(8);
    t.applyFinal(new PageStateMap(8), 0n);
    t.close();
    expect(() => DestinationTracker.open(path)).toThrow(/already holds vm 1.*choose a new --db file/);
    const store = CbitStore.open(path, { readonly: true });
    expect(store.vmIds()).toEqual([1]);
    store.close();
  });

  it('a --db it created is removed again if no guest came; one that existed, or that a guest came to, stays', () => {
    const dir = tempDir();
    const unused = join(dir, 'unused.db');
    DestinationTracker.open(unused).close(); // failed or cancelled before a source came
    expect(readdirSync(dir)).toEqual([]);

    const existing = join(dir, 'existing.db');
    CbitStore.open(existing).close(); // the operator's own, empty database
    DestinationTracker.open(existing).close();
    expect(existsSync(existing)).toBe(true);

    const began = join(dir, 'began.db');
    const t = DestinationTracker.open(began);
    t.begin(8);
    t.discard(); // a migration that came and failed: its record of that stays
    t.close();
    expect(existsSync(began)).toBe(true);
  });

  it('whileListening closes a tracker nobody took over, and leaves one handed over to its run', async () => {
    const dir = tempDir();
    // Failed before a source came (a listener that could not bind): closed,
    // the --db it created removed.
    const failed = join(dir, 'failed.db');
    await expect(
      DestinationTracker.whileListening(failed, async () => {
        throw new Error('EADDRINUSE');
      }),
    ).rejects.toThrow('EADDRINUSE');
    expect(existsSync(failed)).toBe(false);
    // Handed over: the run owns it, even when the run then fails.
    const handed = join(dir, 'handed.db');
    let taken: DestinationTracker | undefined;
    await expect(
      DestinationTracker.whileListening(handed, async (handOver) => {
        taken = handOver();
        throw new Error('the run failed');
      }),
    ).rejects.toThrow('the run failed');
    taken!.begin(8); // still open: the run closes it
    taken!.close();
    expect(existsSync(handed)).toBe(true);
    // What the body returns comes back.
    await expect(DestinationTracker.whileListening(join(dir, 'r.db'), async () => 42)).resolves.toBe(42);
    expect(existsSync(join(dir, 'r.db'))).toBe(false);
  });
  it('discards the VM of a migration that did not resume; a temporary database goes with close()', () => {
    const t = DestinationTracker.open();
    const path = t.store.path;
    t.begin(8);
    t.recordArrival(gfns(1, 2), false);
    t.discard();
    expect(t.store.hasVm(DESTINATION_VM)).toBe(false);
    t.close();
    expect(existsSync(dirname(path))).toBe(false);
  });
});

/** A scripted guest migrated in-process with a destination tracker. */
async function migrateScripted(protocol: Protocol, seed: number) {
  const store = CbitStore.open(join(tempDir(), 'src.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, 512);
  const memory = GuestMemory.create(512);
  const guest = new ScriptedGuest(memory, store, 1, seed, { opsPerTick: 4, workingSet: 96 });
  for (let i = 0; i < 200; i++) guest.step();
  const startSeq = store.info(1).lastSeq;
  const tracker = DestinationTracker.open(join(tempDir(), 'dst.db'));
  const { summary, destination } = await migrateGuest(
    { ...DEFAULT_PARAMS, protocol, maxDowntimeMs: 0, onNoConvergence: 'pause', maxRounds: 6, batchPages: 64 },
    guest,
    store,
    1,
    { tracker },
  );
  return { summary, destination, tracker, store, memory, startSeq };
}

describe('the destination tracker in a migration', () => {
  it('safe: no protocol error; the tracker ends equal to the source host state and to the guest table in the migrated memory', async () => {
    for (const seed of [1, 2, 3]) {
      const { summary, destination, tracker, store, memory } = await migrateScripted('safe', seed);
      expect(summary.verified).toBe(true);
      expect(summary.perspectiveMismatchGfns).toEqual([]);
      expect(summary.trackerMismatchGfns).toEqual([]);
      expect(tracker.store.state(DESTINATION_VM).equals(store.state(1))).toBe(true);
      // The destination's TLB came from the table that travelled in guest memory, and equals the source's.
      const dst = destination.memory!;
      expect(dst.readPageTables(0).words).toEqual(dst.cbits.words);
      expect(dst.cbits.words).toEqual(memory.cbits.words);
      expect(tracker.store.migrationControl(DESTINATION_VM)).toBe(KVM_MIGRATION_READY);
      tracker.close();
      store.close();
    }
  });

  it('naive: the state it sends is the one from the start of the migration, not the guest table; the tracker names exactly those pages and keeps nothing', async () => {
    const { summary, tracker, store, memory, startSeq } = await migrateScripted('naive', 1);
    expect(summary.resumed).toBe(false);
    expect(summary.verified).toBe(false);
    // naive sends every page, and the final state, as they were at the migration's first sync.
    const db = new Database(store.path, { readonly: true });
    const first = db.prepare('SELECT min(seq) AS seq FROM syncs WHERE vm = 1 AND seq >= ?').get(startSeq) as {
      seq: number;
    };
    db.close();
    const atStart = store.stateAt(1, first.seq);
    const expected: number[] = [];
    for (let g = 0; g < memory.npages; g++)
      if (atStart.isEncrypted(g) !== memory.cbits.test(g)) expected.push(g);
    expect(expected.length).toBeGreaterThan(0);
    expect(summary.trackerMismatchGfns).toEqual(expected);
    expect(summary.message).toMatch(/protocol error, not resumed.*differs from the guest's own table/);
    expect(tracker.store.hasVm(DESTINATION_VM)).toBe(false);
    tracker.close();
    store.close();
  });

  it('cbit-first: a written page sent from the c-bit read before the harvest is a perspective error, and one the digests find corrupted too', async () => {
    let found = false;
    for (let seed = 1; seed <= 16 && !found; seed++) {
      const { summary, tracker, store } = await migrateScripted('cbit-first', seed);
      tracker.close();
      store.close();
      if (summary.perspectiveMismatchGfns.length === 0) continue;
      found = true;
      expect(summary.resumed).toBe(false);
      // An independent check agrees: each such page differs from the source's view at pause.
      for (const g of summary.perspectiveMismatchGfns) expect(summary.mismatchedGfns).toContain(g);
      expect(summary.message).toMatch(/arrived from another perspective than the final c-bit state/);
    }
    expect(found).toBe(true);
  });
});
