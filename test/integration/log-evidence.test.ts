/**
 * The migration log is evidence (docs/migration-log.md): from the log alone,
 * with plain SQL, every corrupted page of a negative control (`naive`,
 * `no-final-diff`, `cbit-first`, on a churning 2-vCPU guest with real vCPU
 * threads) is explained by its last send and a later conversion; the pages
 * whose last send disagrees with the guest's c-bit at pause are exactly the
 * corrupted ones; the conversions rebuild the guest's c-bits at pause; and
 * every `safe` round harvested before it synced.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { DEFAULT_PARAMS, type MigrateParams, migrateLocally } from '../../src/migration/run-migration.js';
import type { Protocol } from '../../src/migration/stream.js';
import { tempDir } from '../support/tmp.js';

const CHURN: MigrateParams = {
  ...DEFAULT_PARAMS,
  memoryBytes: 64 * 2 ** 20,
  vcpus: 2,
  workload: 'churn',
  warmupMs: 50,
  // Several live rounds: cbit-first's race needs one that is not the last.
  maxDowntimeMs: 0,
  maxRounds: 6,
  onNoConvergence: 'pause',
};

/** The first of 8 seeds whose migration corrupts, with its log. */
async function corruptingRun(protocol: Protocol): Promise<{ seed: number; log: string; mismatched: number }> {
  const dir = tempDir();
  for (let seed = 1; seed <= 8; seed++) {
    const log = join(dir, `${protocol}-${seed}.db`);
    const { summary } = await migrateLocally({ ...CHURN, protocol, seed, log });
    if (!summary.verified) return { seed, log, mismatched: summary.mismatchedPages };
  }
  throw new Error(`${protocol} did not corrupt within 8 seeds`);
}

/**
 * Per corrupted gfn: its last send (round, perspective, the sync seq of the
 * state that gave the perspective) and the last conversion of it (seq, vCPU,
 * old and new c-bit). Plain SQL over the log's tables.
 */
const CAUSES = `
WITH RECURSIVE corrupted(gfn, last) AS (
  SELECT r.gfn, r.gfn + r.npages - 1
    FROM page_runs r JOIN events e ON e.id = r.event_id WHERE e.kind = 'verification'
  UNION ALL SELECT gfn + 1, last FROM corrupted WHERE gfn < last
), last_send AS (
  SELECT c.gfn, (SELECT e.id FROM page_runs r JOIN events e ON e.id = r.event_id
                  WHERE e.kind = 'send' AND r.gfn <= c.gfn AND c.gfn < r.gfn + r.npages
                  ORDER BY e.id DESC LIMIT 1) AS send_id,
                (SELECT v.id FROM conversions v WHERE v.gfn <= c.gfn AND c.gfn < v.gfn + v.npages
                  ORDER BY v.seq DESC LIMIT 1) AS conversion_id
    FROM corrupted c
)
SELECT s.gfn, e.round AS sentRound, e.detail ->> '$.perspective' AS perspective,
       e.detail ->> '$.stateSeq' AS stateSeq,
       v.seq AS conversionSeq, v.vcpu, v.old_encrypted AS oldEncrypted, v.encrypted
  FROM last_send s JOIN events e ON e.id = s.send_id
  LEFT JOIN conversions v ON v.id = s.conversion_id
 ORDER BY s.gfn`;

interface Cause {
  gfn: number;
  sentRound: number;
  perspective: 'encrypted' | 'shared';
  stateSeq: number | null;
  conversionSeq: number | null;
  vcpu: number | null;
  oldEncrypted: number | null;
  encrypted: number | null;
}

/** The perspective of every page's last send, rebuilt from the send events in order. */
function lastSendPerspectives(db: Database.Database, npages: number): Int8Array {
  const out = new Int8Array(npages).fill(-1);
  const rows = db
    .prepare(
      "SELECT r.gfn, r.npages, r.encrypted FROM page_runs r JOIN events e ON e.id = r.event_id WHERE e.kind = 'send' ORDER BY r.id",
    )
    .all() as { gfn: number; npages: number; encrypted: number }[];
  for (const r of rows) out.fill(r.encrypted, r.gfn, r.gfn + r.npages);
  return out;
}

describe('the log names the cause of every corrupted page', () => {
  for (const protocol of ['naive', 'no-final-diff', 'cbit-first'] as const) {
    it(`${protocol}: each corrupted page was last sent from a c-bit the guest changed after that state's sync`, async () => {
      const run = await corruptingRun(protocol);
      const reader = MigrationLogReader.open(run.log); // the whole log checks out first
      expect(reader.contents.complete).toBe(true);
      const npages = reader.meta.npages;
      reader.close();

      const db = new Database(run.log, { readonly: true });
      const causes = db.prepare(CAUSES).all() as Cause[];
      expect(causes.length, `seed ${run.seed}`).toBe(run.mismatched);
      for (const c of causes) {
        const what = `${protocol} seed ${run.seed} gfn ${c.gfn}: ${JSON.stringify(c)}`;
        expect(c.stateSeq, what).not.toBeNull();
        expect(c.conversionSeq, what).not.toBeNull();
        // The guest converted the page after the sync whose state the send used...
        expect(c.conversionSeq!, what).toBeGreaterThan(c.stateSeq!);
        // ...to the c-bit the send did not use (the state at stateSeq was the
        // send's, so some conversion after it changed the page), and nothing resent it.
        expect(c.encrypted === 1, what).toBe(c.perspective === 'shared');
      }
      // Conversions come from both vCPUs, and the variant decides what was used.
      const vcpus = db.prepare('SELECT DISTINCT vcpu FROM conversions ORDER BY vcpu').pluck().all();
      expect(vcpus).toEqual([0, 1]);

      // Rebuild: initial state at its sync + every later conversion = the guest's c-bits at pause...
      const initial = db
        .prepare(
          "SELECT s.bytes, e.id FROM states s JOIN events e ON e.id = s.event_id WHERE s.name = 'initial'",
        )
        .get() as { bytes: Buffer };
      const initialSeq = db
        .prepare("SELECT detail ->> '$.seq' FROM events WHERE kind = 'sync' ORDER BY id LIMIT 1")
        .pluck()
        .get() as number;
      const state = PageStateMap.deserialize(initial.bytes);
      for (const v of db
        .prepare('SELECT gfn, npages, encrypted FROM conversions WHERE seq > ? ORDER BY seq, id')
        .all(initialSeq) as { gfn: number; npages: number; encrypted: number }[])
        state.apply(v.gfn, v.npages, v.encrypted === 1);
      const guestBytes = db
        .prepare("SELECT bytes FROM states WHERE name = 'guest-cbits-at-pause'")
        .pluck()
        .get() as Buffer;
      const guest = new PageBitmap(npages);
      new Uint8Array(guest.words.buffer).set(guestBytes);
      const rebuilt = new PageBitmap(npages);
      for (const r of state.ranges()) if (r.encrypted) rebuilt.setRange(r.gfn, r.npages);
      expect(rebuilt.clone().xor(guest).count()).toBe(0);

      // ...and the pages whose last send disagrees with it are exactly the corrupted ones (strict).
      const sent = lastSendPerspectives(db, npages);
      const wrong: number[] = [];
      for (let g = 0; g < npages; g++) if (sent[g] !== (guest.test(g) ? 1 : 0)) wrong.push(g);
      expect(wrong).toEqual(causes.map((c) => c.gfn));
      db.close();
    }, 120_000);
  }
});

const HARVEST_BEFORE_SYNC = `
SELECT s.round FROM events s
 WHERE s.kind = 'sync'
   AND NOT EXISTS (SELECT 1 FROM events h WHERE h.kind = 'harvest' AND h.round = s.round AND h.id < s.id)`;

describe('the log shows the order of each round', () => {
  it('every safe round harvested before it synced; cbit-first (the two swapped) fails the same query', async () => {
    const dir = tempDir();
    const safe = join(dir, 'safe.db');
    const { summary } = await migrateLocally({ ...CHURN, protocol: 'safe', seed: 1, log: safe });
    expect(summary.verified).toBe(true);
    const db = new Database(safe, { readonly: true });
    expect(db.prepare(HARVEST_BEFORE_SYNC).all()).toEqual([]);
    const rounds = db.prepare("SELECT count(DISTINCT round) FROM events WHERE kind = 'sync'").pluck().get();
    expect(rounds).toBe(summary.rounds);
    // safe resends what its syncs saw change (rule 3) and logged them as such.
    expect(db.prepare("SELECT count(*) FROM events WHERE kind = 'resend'").pluck().get()).toBeGreaterThan(0);
    db.close();

    const swapped = join(dir, 'cbit-first.db');
    await migrateLocally({ ...CHURN, protocol: 'cbit-first', seed: 1, log: swapped });
    const db2 = new Database(swapped, { readonly: true });
    const late = db2.prepare(HARVEST_BEFORE_SYNC).pluck().all() as number[];
    // Every round of cbit-first read the c-bit state first, round 0 included.
    const synced = db2
      .prepare("SELECT DISTINCT round FROM events WHERE kind = 'sync' ORDER BY round")
      .pluck()
      .all();
    expect(late).toEqual(synced);
    expect(late.length).toBeGreaterThanOrEqual(2);
    db2.close();
  }, 120_000);
});
