/**
 * Replay of recorded migrations (src/explore/replay*.ts): logs of real
 * migrations (a churning 2-vCPU guest on worker threads) of `safe` and of
 * the negative controls, each the first of 8 seeds that corrupts. The
 * replay's verdict must equal the engine's recorded one page for page, each
 * corrupted page's chain must name the events the variant's flaw implies,
 * and the what-if must reproduce the recording under its own variant and
 * show that `safe` would have verified.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replay } from '../../src/explore/replay.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { type MigrateParams, migrateLocally } from '../../src/migration/run-migration.js';
import type { Protocol, VerifyMode } from '../../src/migration/stream.js';
import { CHURN } from '../migration/churn-params.js';

/** The negative controls' guest, with several live rounds: cbit-first's race needs one that is not the last. */
const GUEST: MigrateParams = { ...CHURN, maxDowntimeMs: 0, maxRounds: 6, onNoConvergence: 'pause' };

interface Run {
  log: string;
  seed: number;
  /** The engine's corrupted gfns, read back with the log reader. */
  mismatched: number[];
}

// One directory for the whole file: the logs are shared by its tests.
const dir = mkdtempSync(join(tmpdir(), 'sevtrack-replay-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const runs = new Map<string, Run>();

/** The first of 8 seeds whose migration (verified under `verify`) corrupts, or seed 1 for safe. */
async function record(protocol: Protocol, verify: VerifyMode): Promise<Run> {
  for (let seed = 1; seed <= 8; seed++) {
    const log = join(dir, `${protocol}-${verify}-${seed}.db`);
    const { summary } = await migrateLocally({ ...GUEST, protocol, verify, seed, log });
    if (protocol === 'safe' || !summary.verified) {
      const reader = MigrationLogReader.open(log);
      const mismatched = reader
        .corrupted()
        .flatMap((r) => Array.from({ length: r.npages }, (_, i) => r.gfn + i));
      reader.close();
      return { log, seed, mismatched };
    }
  }
  throw new Error(`${protocol} did not corrupt within 8 seeds`);
}

const CONTROLS: [Protocol, VerifyMode][] = [
  ['safe', 'strict'],
  ['naive', 'defined'],
  ['no-final-diff', 'defined'],
  ['cbit-first', 'defined'],
  ['no-cbit-dirty', 'strict'],
];

beforeAll(async () => {
  for (const [p, v] of CONTROLS) runs.set(p, await record(p, v));
}, 240_000);

describe('replay of recorded migrations', () => {
  it('safe: clean, as the engine recorded; the what-if under safe repeats every round', () => {
    const r = replay(runs.get('safe')!.log, { protocol: 'safe' });
    expect(r.outcome).toBe('clean');
    expect(r.corruptedCount).toBe(0);
    expect(r.comparedPages).toBe(r.npages);
    expect(r.agreesWithRecord).toBe(true);
    expect(r.whatIf!.outcome).toBe('clean');
    expect(r.whatIf!.rounds.map((x) => x.pagesSent)).toEqual(r.rounds.map((x) => x.sent));
    expect(r.whatIf!.rounds.map((x) => x.cbitResends)).toEqual(r.rounds.map((x) => x.cbitResends));
    expect(r.pause!.downtimeUs).toBeGreaterThan(0);
    expect(r.rounds.at(-1)!.paused).toBe(true);
  });

  for (const [protocol] of CONTROLS.slice(1)) {
    it(`${protocol}: the replay finds exactly the engine's corrupted pages, and the what-if repeats them`, () => {
      const run = runs.get(protocol)!;
      const r = replay(run.log, { protocol });
      const what = `${protocol} seed ${run.seed}`;
      expect(r.outcome, what).toBe('corrupted');
      expect(r.agreesWithRecord, what).toBe(true);
      expect(
        r.corrupted.map((c) => c.gfn),
        what,
      ).toEqual(run.mismatched);
      // The model, driven by the recorded guest events, repeats the run round for round.
      expect(r.whatIf!.corrupted, what).toEqual(run.mismatched);
      expect(
        r.whatIf!.rounds.map((x) => x.pagesSent),
        what,
      ).toEqual(r.rounds.map((x) => x.sent));
      expect(r.whatIf!.unplaced, what).toBe(0);
      for (const c of r.corrupted) {
        // The page went from a perspective other than the guest's c-bit at pause...
        expect(c.lastSend!.perspective, c.text).not.toBe(c.cbitAtPause);
        // ...and the guest converted it after the state the send used, to that c-bit.
        expect(c.conversions.length, c.text).toBeGreaterThan(0);
        expect(c.conversions.at(-1)!.seq, c.text).toBeGreaterThan(c.lastSend!.stateSeq!);
        expect(c.conversions.at(-1)!.encrypted, c.text).toBe(c.cbitAtPause === 'encrypted');
        expect(c.text, c.text).toMatch(
          new RegExp(`^gfn 0x${c.gfn.toString(16)}: sent in round ${c.lastSend!.round}`),
        );
        expect(c.text).toMatch(new RegExp(`c-bit state at sync seq ${c.lastSend!.stateSeq}`));
        expect(c.text).toMatch(new RegExp(`(encrypted|decrypted)[^;]* at seq ${c.conversions.at(-1)!.seq}`));
        expect(c.text).toMatch(/it was never resent$/);
      }
    });

    it(`${protocol}: the what-if says safe would have verified, sending at least as many pages`, () => {
      const run = runs.get(protocol)!;
      const r = replay(run.log, { protocol: 'safe' });
      expect(r.outcome).toBe('corrupted');
      expect(r.whatIf!.protocol).toBe('safe');
      expect(r.whatIf!.outcome, `${protocol} seed ${run.seed}`).toBe('clean');
      expect(r.whatIf!.corrupted).toEqual([]);
      if (protocol === 'no-cbit-dirty' || protocol === 'naive')
        expect(r.whatIf!.pagesSent).toBeGreaterThan(r.rounds.reduce((n, x) => n + x.sent, 0));
    });
  }

  it('naive: every page went with round 0 state, though later syncs knew better', () => {
    const r = replay(runs.get('naive')!.log);
    const initialSeq = r.corrupted[0].lastSend!.stateSeq;
    for (const c of r.corrupted) {
      expect(c.lastSend!.stateSeq).toBe(initialSeq);
      if (c.lastSend!.round > 0) {
        expect(c.cause).toBe('round-0-state');
        expect(c.text).toMatch(
          /naive sends every page with round 0's state, though the syncs had reached seq \d+/,
        );
      }
    }
  });

  it('no-final-diff: the paused round sent with the last live sync state', () => {
    const r = replay(runs.get('no-final-diff')!.log);
    const paused = r.corrupted.filter((c) => c.lastSend!.paused);
    expect(paused.length).toBeGreaterThan(0);
    for (const c of paused) {
      expect(c.cause).toBe('paused-round-without-sync');
      expect(c.written).toBe(true);
      expect(c.text).toMatch(/the paused round did not sync \(no-final-diff\)/);
    }
  });

  it("cbit-first (defined): Rutherford's race — converted and written between the round's sync and its harvest", () => {
    const r = replay(runs.get('cbit-first')!.log);
    expect(r.verify).toBe('defined');
    for (const c of r.corrupted) {
      expect(c.cause, c.text).toBe('converted-between-sync-and-harvest');
      expect(c.lastSend!.paused).toBe(false);
      expect(c.text).toMatch(
        /and wrote it before round (\d+)'s harvest, which found it dirty and cleared its dirty bit after the round's sync had already read the old c-bit/,
      );
      expect(c.text).toMatch(
        /the pause-time diff \(seq \d+ to \d+\) compares with the last live sync, which already had the change/,
      );
      expect(c.consumedBy!.round).toBeGreaterThan(c.lastSend!.round);
    }
  });

  it('no-cbit-dirty (strict): converted, never rewritten, never resent; under defined nothing is corrupted', () => {
    const run = runs.get('no-cbit-dirty')!;
    const r = replay(run.log);
    for (const c of r.corrupted) {
      expect(c.cause).toBe('change-not-resent');
      expect(c.written).toBe(false);
      expect(c.text).toMatch(/did not rewrite it/);
      expect(c.text).toMatch(/no-cbit-dirty does not resend a page for a c-bit change alone/);
    }
    // docs/design.md §3: no-cbit-dirty never corrupts a page the guest wrote after converting it.
    const defined = replay(run.log, { verify: 'defined' });
    expect(defined.outcome).toBe('clean');
    expect(defined.agreesWithRecord).toBeNull(); // the engine verified under strict
  });

  it('what-if: a stricter variant sends more; the per-round figures add up to the log', () => {
    const r = replay(runs.get('safe')!.log, { protocol: 'no-cbit-dirty' });
    const sent = r.rounds.reduce((n, x) => n + x.sent, 0);
    // no-cbit-dirty resends nothing for a c-bit change alone, so it sends fewer.
    expect(r.whatIf!.cbitResends).toBe(0);
    expect(r.whatIf!.pagesSent).toBe(sent - r.rounds.reduce((n, x) => n + x.cbitResends, 0));
    expect(r.rounds[0].sent).toBe(r.npages);
  });

  it('explainLimit bounds the chains but not the count', () => {
    const r = replay(runs.get('naive')!.log, { explainLimit: 2 });
    expect(r.corrupted).toHaveLength(2);
    expect(r.corruptedCount).toBe(runs.get('naive')!.mismatched.length);
  });
});
