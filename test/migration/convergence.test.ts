import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type FrameChannel, memoryChannelPair } from '../../src/migration/channel.js';
import { Convergence, NotConvergingError } from '../../src/migration/convergence.js';
import { MigrationDestination } from '../../src/migration/destination.js';
import { DEFAULT_PARAMS, migrateGuest, migrateLocally } from '../../src/migration/run-migration.js';
import { MigrationSource, type RoundProgress } from '../../src/migration/source.js';
import { MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { tempDir } from '../support/tmp.js';

function setup(opsPerTick: number) {
  const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, 1024);
  const guest = new ScriptedGuest(GuestMemory.create(1024), store, 1, 3, { opsPerTick, workingSet: 1024 });
  return { store, guest };
}

describe('convergence', () => {
  it('pauses after the first incremental round when the expected downtime fits --max-downtime', async () => {
    const { store, guest } = setup(0);
    const rounds: RoundProgress[] = [];
    const { summary } = await migrateGuest(
      { ...DEFAULT_PARAMS, onRound: (r) => rounds.push(r) },
      guest,
      store,
      1,
    );
    expect(summary.rounds).toBe(3); // the bulk round, one incremental round, the paused round
    expect(summary.converged).toBe(true);
    expect(summary.estimatedDowntimeMs).toBeGreaterThan(0);
    expect(summary.estimatedDowntimeMs).toBeLessThanOrEqual(DEFAULT_PARAMS.maxDowntimeMs);
    expect(rounds[1]).toMatchObject({ round: 1, paused: false, dirtyLeft: 0 });
    store.close();
  });

  it('aborts by default when --max-downtime cannot be met: the message gives the rates and the fix, the guest runs on', async () => {
    // The guest dirties ~a third of its pages between every two reads of the log.
    const { store, guest } = setup(120);
    const before = store.info(1).lastSeq;
    const err = await migrateGuest(
      { ...DEFAULT_PARAMS, maxDowntimeMs: 1e-6, maxRounds: 30 },
      guest,
      store,
      1,
    ).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(NotConvergingError);
    expect(err!.message).toMatch(/dirties [\d.]+ MB\/s against a throughput of [\d.]+ MB\/s/);
    expect(err!.message).toMatch(/--max-downtime.*--on-no-convergence pause/);
    expect(guest.paused).toBe(false);
    guest.tick('round-start', 0); // it still runs and reports
    expect(store.info(1).lastSeq).toBeGreaterThan(before);
    store.close();
  });

  it('--on-no-convergence pause pauses anyway after rounds that do not shrink the dirty set, and says so', async () => {
    const { store, guest } = setup(120);
    const rounds: RoundProgress[] = [];
    const { summary } = await migrateGuest(
      {
        ...DEFAULT_PARAMS,
        maxDowntimeMs: 1e-6,
        maxRounds: 30,
        onNoConvergence: 'pause',
        onRound: (r) => rounds.push(r),
      },
      guest,
      store,
      1,
    );
    expect(summary.verified).toBe(true);
    expect(summary.converged).toBe(false);
    expect(summary.rounds).toBeLessThan(10);
    expect(rounds.filter((r) => !r.paused).every((r) => r.dirtyLeft > 0)).toBe(true);
    store.close();
  });

  it('runs every round up to --max-rounds when --max-downtime is 0', async () => {
    const { store, guest } = setup(120);
    const { summary } = await migrateGuest(
      { ...DEFAULT_PARAMS, maxDowntimeMs: 0, maxRounds: 12, onNoConvergence: 'pause' },
      guest,
      store,
      1,
    );
    expect(summary.rounds).toBe(13); // 12 live rounds and the paused one
    store.close();
  });

  it('an idle 1 GiB guest converges under the default abort: a one-page round does not set the bandwidth its 4 MiB DIGESTS table is priced at', async () => {
    // Its incremental rounds send one page each; priced at that round's
    // 2-3 MB/s, the table alone took 1.4-2 s against --max-downtime 300 ms.
    const rounds: RoundProgress[] = [];
    const { summary } = await migrateLocally({
      ...DEFAULT_PARAMS,
      memoryBytes: 2 ** 30,
      workload: 'idle',
      warmupMs: 0,
      guestEncrypted: false,
      onRound: (r) => rounds.push(r),
    });
    expect(summary.verified).toBe(true);
    expect(summary.converged).toBe(true);
    expect(rounds.map((r) => r.round)).toEqual([0, 1, 2]); // bulk, one incremental, paused
    expect(rounds[1].pagesSent - rounds[0].pagesSent).toBeLessThan(64);
    expect(rounds[1].bandwidthMBps).toBe(rounds[0].bandwidthMBps);
    expect(rounds[1].expectedDowntimeMs).toBeLessThanOrEqual(DEFAULT_PARAMS.maxDowntimeMs);
  });

  it('a link that slows after the bulk round: the bandwidth the DIGESTS table is priced at follows it', async () => {
    // A 256 MiB guest (a 1 MiB table) whose live rounds each dirty far less than the table.
    const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
    store.registerVm(1, 65_536);
    const guest = new ScriptedGuest(GuestMemory.create(65_536), store, 1, 3, {
      opsPerTick: 20,
      workingSet: 65_536,
    });
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    let roundsEnded = 0;
    const slowing: FrameChannel = {
      send: (type, payload) => {
        if (type === Msg.ROUND_END) roundsEnded++;
        return a.send(type, payload);
      },
      sendLent: async (type, buffer, length) => {
        if (roundsEnded > 0) await new Promise((r) => setTimeout(r, 15)); // after the bulk round
        return a.sendLent(type, buffer, length);
      },
      next: (t) => a.next(t),
      stopReceiving: (reason) => a.stopReceiving(reason),
      close: () => a.close(),
    };
    const dest = new MigrationDestination({ channel: b, peerTimeoutMs: 10_000 }).run();
    const rounds: RoundProgress[] = [];
    const source = new MigrationSource({
      ...DEFAULT_PARAMS,
      maxDowntimeMs: 0,
      maxRounds: 14,
      onNoConvergence: 'pause',
      log: undefined,
      guest,
      store,
      vm: 1,
      channel: slowing,
      psp: DEFAULT_PARAMS.psp,
      batchPages: 64,
      onRound: (r) => rounds.push(r),
    });
    const summary = await source.run();
    await dest;
    expect(summary.verified).toBe(true);
    const bulk = rounds[0].bandwidthMBps;
    expect(bulk).toBeGreaterThan(0);
    // A round of ~70 pages (280 KiB) measures too little of the link to set
    // it; once the slowed rounds together moved the table's 1 MiB, the
    // figure follows the link (each frame waited 15 ms).
    const changed = rounds.findIndex((r) => r.bandwidthMBps !== bulk);
    expect(changed).toBeGreaterThanOrEqual(2);
    expect(changed).toBeLessThan(rounds.length - 1);
    expect(rounds[changed].bandwidthMBps).toBeLessThan(bulk / 3);
    store.close();
  });

  it('once the estimate fits, runs another round only while rounds still halve the dirty set', () => {
    /** A Convergence after its bulk round (2 µs a page sent), which left `left` pages. */
    const afterBulk = (left: number) => {
      const c = new Convergence(300, 30);
      c.recordRound({ readsMs: 1, pagesSent: 100_000, sendMs: 200, roundTripMs: 1, roundMs: 201 });
      expect(c.decide(0, left).another).toBe(true); // after the bulk round: always
      return c;
    };
    const c = afterBulk(40_000);
    const fits = (d: { converged: boolean }) => expect(d.converged).toBe(true);
    let d = c.decide(1, 15_000); // fits, and less than half of 40k: the next round is cheaper than pausing now
    fits(d);
    expect(d.another).toBe(true);
    d = c.decide(2, 6_000);
    fits(d);
    expect(d.another).toBe(true);
    d = c.decide(3, 4_000); // no longer halved: pause
    fits(d);
    expect(d.another).toBe(false);
    // A burst during a deferred pause's extra round pauses at once, converged (never an abort).
    const burst = afterBulk(40_000);
    expect(burst.decide(1, 15_000).another).toBe(true);
    burst.recordRound({ readsMs: 1, pagesSent: 15_000, sendMs: 30, roundTripMs: 1, roundMs: 31 });
    d = burst.decide(2, 400_000);
    expect(d.estimatedDowntimeMs).toBeGreaterThan(300);
    expect(d).toMatchObject({ another: false, converged: true });
    // No extra round when twice what the guest should dirty during it would no longer fit:
    // 1 + 100k × 0.002 + 3 = 204 ms fits; the guest dirtied 100k pages in the 201 ms round,
    // so about 100k in a next round of 202 ms, and twice that (406 ms) does not fit.
    d = afterBulk(400_000).decide(1, 100_000);
    fits(d);
    expect(d.another).toBe(false);
    // A slow round that dirtied little: 25k pages left of 100k (10 µs a page sent) is
    // 254 ms, and twice the set would not fit (504 ms); but the guest dirties 25k pages/s,
    // about 6.3k during a next round of 252 ms, and twice that (130 ms) fits: one more round.
    const slow = new Convergence(300, 30);
    slow.recordRound({ readsMs: 1, pagesSent: 100_000, sendMs: 1000, roundTripMs: 1, roundMs: 1001 });
    expect(slow.decide(0, 100_000).another).toBe(true);
    d = slow.decide(1, 25_000);
    expect(d.estimatedDowntimeMs).toBeCloseTo(254, 6);
    expect(slow.estimate(50_000)).toBeGreaterThan(300);
    fits(d);
    expect(d.another).toBe(true);
    // Nothing left: pause at once.
    expect(afterBulk(100).decide(1, 0).another).toBe(false);
  });

  it('estimates every step of the paused phase from the rates of the last round', () => {
    const c = new Convergence(300, 30);
    expect(c.estimate(10)).toBe(Number.POSITIVE_INFINITY); // nothing measured yet
    c.recordRound({ readsMs: 2, pagesSent: 1000, sendMs: 100, roundTripMs: 1, roundMs: 102 });
    c.stateMs = 0.5;
    c.digestsMs = 4;
    // reads + pages × send (each side hashes a page in its send pass) + state + digests + three round trips
    expect(c.estimate(500)).toBeCloseTo(2 + 500 * 0.1 + 0.5 + 4 + 3, 6);
    const d = c.decide(1, 5000);
    expect(d.converged).toBe(false);
    expect(d.dirtyPagesPerSec).toBeCloseTo(5000 / 0.102, 3);
    expect(d.sentPagesPerSec).toBeCloseTo(10_000, 3);
    expect(Convergence.explain(d, 2, 300)).toMatch(/after 2 rounds .* above --max-downtime 300 ms/);
  });
});
