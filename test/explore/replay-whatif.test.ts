/**
 * Replay on small hand-written logs whose every event is known: Rutherford's
 * race recorded by a cbit-first run (the causes, the what-if placing the
 * conversion and the write between the round's two reads, safe saving it),
 * a notification in flight at the pause, and the per-page expansions of
 * the log's bitmaps and state maps (property tests).
 */
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { replay } from '../../src/explore/replay.js';
import { bitmapPages, statePages } from '../../src/explore/replay-log.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import type { Protocol, VerifyMode } from '../../src/migration/stream.js';
import { tempDir } from '../support/tmp.js';

const NPAGES = 8;
const ALL = Array.from({ length: NPAGES }, (_, g) => g);

/** Bitmap words with the listed pages set. */
function words(pages: number[]): Uint32Array {
  const b = new PageBitmap(NPAGES);
  for (const g of pages) b.setRange(g, 1);
  return b.words;
}

interface Scenario {
  protocol: Protocol;
  verify: VerifyMode;
  /** Pages shared at pause in the guest's own table, and written since their last conversion. */
  sharedAtPause: number[];
  written: number[];
  mismatched: number[];
}

/**
 * A cbit-first migration of 8 encrypted pages, one vCPU: round 1 syncs at
 * seq 0, the guest decrypts gfn 3 (seq 1) and writes it, round 1's harvest
 * finds it and sends it from the stale state; round 2's sync consumes the
 * change without resending; the paused round's diff is empty.
 */
function rutherfordLog(path: string, s: Scenario): void {
  const log = MigrationLog.create(path, {
    role: 'source',
    npages: NPAGES,
    vcpus: 1,
    protocol: s.protocol,
    verify: s.verify,
    params: {},
  });
  const enc = new PageStateMap(NPAGES, true);
  const after = enc.clone();
  after.apply(3, 1, false);
  log.start({ generation: 0, migrationControl: 1 });
  const s0 = { seq: 0, previousSeq: 0, delta: [], state: enc };
  log.sync(0, s0);
  log.harvest(0, []);
  log.cbitState(0, 'initial', enc.serialize(), enc);
  log.send(0, true, ALL, 1, 'send', enc);
  log.roundEnd(0, { pagesSent: 8 });
  const s1 = { seq: 0, previousSeq: 0, delta: [], state: enc.clone() };
  log.sync(1, s1);
  log.conversions([{ seq: 1, vcpu: 0, gfn: 3, npages: 1, oldEncrypted: true, encrypted: false }]);
  log.harvest(1, [{ gfn: 3, npages: 1 }]);
  log.send(1, true, [3], 9, 'send', s1.state);
  log.roundEnd(1, { pagesSent: 9 });
  log.sync(2, { seq: 1, previousSeq: 0, delta: [{ gfn: 3, npages: 1, encrypted: false }], state: after });
  log.harvest(2, []);
  log.roundEnd(2, { pagesSent: 9 });
  const shared = new Set(s.sharedAtPause);
  log.pause(
    3,
    { converged: true },
    { guestCbits: words(ALL.filter((g) => !shared.has(g))), written: words(s.written) },
  );
  const final = after.clone();
  log.sync(3, { seq: 1, previousSeq: 1, delta: [], state: final });
  log.harvest(3, []);
  log.finalDiff(3, { fromSeq: 1, toSeq: 1, delta: [] });
  log.roundEnd(3, { pagesSent: 9 });
  log.cbitState(3, 'final', final.serialize(), final);
  log.verification(3, {
    resumed: s.mismatched.length === 0,
    verified: s.mismatched.length === 0,
    mode: s.verify,
    comparedPages: s.verify === 'strict' ? NPAGES : s.written.length,
    skippedPages: 0,
    skipReason: '',
    mismatchedGfns: s.mismatched,
    message: '',
  });
  log.resume(3, s.mismatched.length === 0 ? 'destination' : 'source');
  log.close({});
}

describe('replay of a hand-written cbit-first log', () => {
  const race: Scenario = {
    protocol: 'cbit-first',
    verify: 'defined',
    sharedAtPause: [3],
    written: [3],
    mismatched: [3],
  };

  it("names Rutherford's race for gfn 3 and agrees with the recorded verdict", () => {
    const path = join(tempDir(), 'race.db');
    rutherfordLog(path, race);
    const r = replay(path);
    expect(r.outcome).toBe('corrupted');
    expect(r.agreesWithRecord).toBe(true);
    expect(r.comparedPages).toBe(1);
    expect(r.corrupted).toHaveLength(1);
    const c = r.corrupted[0];
    expect(c).toMatchObject({
      gfn: 3,
      cause: 'converted-between-sync-and-harvest',
      cbitAtPause: 'shared',
      written: true,
      lastSend: { round: 1, paused: false, perspective: 'encrypted', stateSeq: 0, reason: 'dirty' },
      conversions: [{ seq: 1, vcpu: 0, encrypted: false }],
      consumedBy: { round: 2, seq: 1 },
    });
    expect(c.text).toBe(
      "gfn 0x3: sent in round 1 as encrypted (its harvest found it dirty; c-bit state at sync seq 0); the guest (vCPU 0) decrypted it at seq 1 and wrote it before round 1's harvest, which found it dirty and cleared its dirty bit after the round's sync had already read the old c-bit; round 2's sync (seq 1) consumed the change, but cbit-first does not resend a page for a c-bit change alone while the guest runs; the pause-time diff (seq 1 to 1) compares with the last live sync, which already had the change, so it did not list it; it was never resent",
    );
    expect(r.rounds.map((x) => [x.round, x.dirty, x.sent, x.cbitChanges, x.cbitResends])).toEqual([
      [0, 0, 8, 0, 0],
      [1, 1, 1, 0, 0],
      [2, 0, 0, 1, 0],
      [3, 0, 0, 0, 0],
    ]);
  });

  it('the what-if places the conversion and the write between round 1 reads: cbit-first repeats, safe resends', () => {
    const path = join(tempDir(), 'race.db');
    rutherfordLog(path, race);
    const same = replay(path, { protocol: 'cbit-first' }).whatIf!;
    expect(same).toMatchObject({ outcome: 'corrupted', corrupted: [3], unplaced: 0, pagesSent: 9 });
    const safe = replay(path, { protocol: 'safe' }).whatIf!;
    // safe reads the dirty log first (nothing yet), then syncs: rule 3 resends gfn 3 as shared;
    // round 2's harvest finds the write and sends it again.
    expect(safe).toMatchObject({ outcome: 'clean', corrupted: [], unplaced: 0 });
    expect(safe.rounds.map((x) => [x.pagesSent, x.cbitResends])).toEqual([
      [8, 0],
      [1, 1],
      [1, 0],
      [0, 0],
    ]);
    // no-final-diff keeps rule 3 while the guest runs: saved too; naive is not.
    expect(replay(path, { protocol: 'no-final-diff' }).whatIf!.outcome).toBe('clean');
    expect(replay(path, { protocol: 'naive' }).whatIf!.corrupted).toEqual([3]);
  });

  it('a page the guest converted whose notification never reached the tracker: in flight at the pause', () => {
    const path = join(tempDir(), 'inflight.db');
    // gfn 5 is shared in the guest's table at pause; no conversion of it was logged.
    rutherfordLog(path, {
      protocol: 'safe',
      verify: 'strict',
      sharedAtPause: [3, 5],
      written: [],
      mismatched: [3, 5],
    });
    const r = replay(path);
    expect(r.agreesWithRecord).toBe(true);
    const five = r.corrupted.find((c) => c.gfn === 5)!;
    expect(five.cause).toBe('in-flight-at-pause');
    expect(five.text).toMatch(
      /the guest's own c-bit table says shared at pause but the tracker was never told \(its notification was in flight at the pause: the guest broke rule 5\)/,
    );
    // The what-if's guest also has it in flight: even safe sends it from the tracker's state.
    expect(replay(path, { protocol: 'safe' }).whatIf!.corrupted).toEqual([5]);
  });

  it('a recorded verdict that differs from the rebuild is reported as a disagreement', () => {
    const path = join(tempDir(), 'lie.db');
    rutherfordLog(path, { ...race, mismatched: [] });
    const r = replay(path);
    expect(r.outcome).toBe('corrupted');
    expect(r.agreesWithRecord).toBe(false);
  });
});

describe('per-page expansions of the log states', () => {
  it('bitmapPages reads bit g of little-endian u32 word g/32', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((n) => fc.tuple(fc.constant(n), fc.uniqueArray(fc.nat(n - 1)))),
        ([n, set]) => {
          const b = new PageBitmap(n);
          for (const g of set) b.setRange(g, 1);
          const bytes = new Uint8Array(b.words.buffer, b.words.byteOffset, b.words.byteLength);
          const pages = bitmapPages(bytes, n);
          for (let g = 0; g < n; g++) expect(pages[g]).toBe(b.test(g) ? 1 : 0);
        },
      ),
    );
  });

  it('statePages equals the map page by page', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }).chain((n) =>
          fc.tuple(
            fc.constant(n),
            fc.array(fc.tuple(fc.nat(n - 1), fc.integer({ min: 1, max: 16 }), fc.boolean()), {
              maxLength: 20,
            }),
          ),
        ),
        ([n, ops]) => {
          const m = new PageStateMap(n, true);
          for (const [g, k, e] of ops) m.apply(g, Math.min(k, n - g), e);
          const pages = statePages(PageStateMap.deserialize(m.serialize()));
          for (let g = 0; g < n; g++) expect(pages[g]).toBe(m.isEncrypted(g) ? 1 : 0);
        },
      ),
    );
  });
});
