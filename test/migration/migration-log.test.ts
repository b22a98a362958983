/**
 * MigrationLog and MigrationLogReader (src/migration/migration-log.ts,
 * log-reader.ts): events written through the typed API read back in order
 * with their page runs and states; conversions carry the state they replaced;
 * run-length page sets match a naive model; and every file that is not a
 * trustworthy log is refused with the reason and, where there is one, the
 * first bad event.
 */
import { copyFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { gfnsToRuns } from '../../src/common/ranges.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { LOG_VERSION, MigrationLogError } from '../../src/migration/log-schema.js';
import { summarizeLog } from '../../src/migration/log-summary.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import { tempDir } from '../support/tmp.js';

const NPAGES = 64;

/** A small complete source log: two rounds, a pause, a failed verification. */
function writeLog(path: string, options: { close?: boolean } = {}): void {
  const log = MigrationLog.create(path, {
    role: 'source',
    npages: NPAGES,
    vcpus: 2,
    protocol: 'naive',
    verify: 'strict',
    params: { seed: 7 },
  });
  const state = new PageStateMap(NPAGES, true);
  const tap = log.conversionTap(state, 10);
  log.start({ generation: 0, migrationControl: 1 });
  // seq 10 is already in the state: skipped. seq 11 spans an encrypted run only.
  tap([
    { seq: 10, vcpu: 0, gfn: 0, npages: 4, encrypted: false },
    { seq: 11, vcpu: 1, gfn: 8, npages: 4, encrypted: false },
  ]);
  log.harvest(0, [{ gfn: 0, npages: NPAGES }]);
  const s0 = { seq: 11, previousSeq: 0, delta: [{ gfn: 8, npages: 4, encrypted: false }], state: {} };
  log.sync(0, s0);
  log.send(
    0,
    true,
    Float64Array.from({ length: 8 }, (_, i) => i),
    1,
    'send',
    s0.state,
  );
  log.send(0, false, [8, 9, 10, 11], 0, 'send', s0.state);
  log.roundEnd(0, { pagesSent: 12 });
  // A change over a mixed run (8-11 shared, 12-13 encrypted) is split by old state.
  tap([{ seq: 12, vcpu: 0, gfn: 10, npages: 4, encrypted: true }]);
  log.pause(
    1,
    { converged: true },
    { guestCbits: new Uint32Array([0xffff_f0ff, 0xffff_ffff]), written: new Uint32Array(2) },
  );
  log.harvest(1, [{ gfn: 12, npages: 2 }]);
  log.send(1, true, [12, 13], 9, 'send', s0.state);
  log.roundEnd(1, { pagesSent: 14 });
  log.cbitState(1, 'final', state.serialize(), state);
  log.verification(1, {
    resumed: false,
    verified: false,
    mode: 'strict',
    comparedPages: NPAGES,
    skippedPages: 0,
    skipReason: '',
    mismatchedGfns: [10, 11],
    message: '2 pages differ',
  });
  log.resume(1, 'source');
  if (options.close !== false) log.close({ verified: false });
}

function refusal(path: string): MigrationLogError {
  try {
    MigrationLogReader.open(path).close();
  } catch (err) {
    expect(err).toBeInstanceOf(MigrationLogError);
    return err as MigrationLogError;
  }
  throw new Error(`${path} was accepted`);
}

describe('MigrationLog', () => {
  it('reads back every event in order, with runs, states, conversions and a summary', () => {
    const path = join(tempDir(), 'm.db');
    writeLog(path);
    const r = MigrationLogReader.open(path);
    expect(r.meta).toMatchObject({ version: LOG_VERSION, role: 'source', npages: NPAGES, vcpus: 2 });
    expect(r.events.map((e) => e.kind)).toEqual([
      'start',
      'harvest',
      'sync',
      'send',
      'send',
      'round-end',
      'pause',
      'harvest',
      'send',
      'round-end',
      'cbit-state',
      'verification',
      'resume',
      'end',
    ]);
    const sends = r.events.filter((e) => e.kind === 'send');
    expect(sends[0].runs).toEqual([{ gfn: 0, npages: 8, encrypted: true }]);
    expect(sends[1].detail).toMatchObject({ perspective: 'shared', pages: 4, stateSeq: 11 });
    expect(r.events.find((e) => e.kind === 'pause')!.states).toEqual([
      'guest-cbits-at-pause',
      'written-at-pause',
    ]);
    expect(
      r.contents.conversions.map((c) => [c.seq, c.vcpu, c.gfn, c.npages, c.old_encrypted, c.encrypted]),
    ).toEqual([
      [11, 1, 8, 4, 1, 0],
      [12, 0, 10, 2, 0, 1],
      [12, 0, 12, 2, 1, 1],
    ]);
    expect(r.corrupted()).toEqual([{ gfn: 10, npages: 2 }]);
    expect(r.state('final')?.format).toBe('page-state-map');
    const s = summarizeLog(r.contents);
    expect(s.complete).toBe(true);
    expect(s.rounds.map((x) => [x.round, x.sentEncrypted, x.sentShared, x.paused, x.finished])).toEqual([
      [0, 8, 4, false, true],
      [1, 2, 0, true, true],
    ]);
    expect(s.conversions).toMatchObject({ count: 3, firstSeq: 11, lastSeq: 12 });
    r.close();
  });

  it('refuses to overwrite an existing database', () => {
    const path = join(tempDir(), 'm.db');
    writeLog(path);
    expect(() => writeLog(path)).toThrow(/already holds a database; pass a new --log path/);
    expect(MigrationLogReader.open(path).events.length).toBe(14);
  });

  it('a log that was never closed is valid up to its last commit', () => {
    const path = join(tempDir(), 'm.db');
    writeLog(path, { close: false }); // the process "dies" with events after the verdict's commit
    const r = MigrationLogReader.open(path);
    expect(r.contents.complete).toBe(false);
    expect(r.events.at(-1)!.kind).toBe('verification');
    r.close();
  });

  it('gfnsToRuns matches a naive model', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 300 }), { maxLength: 200 }), (list) => {
        const gfns = [...list].sort((a, b) => a - b);
        const runs = gfnsToRuns(gfns);
        expect(runs.flatMap((r) => Array.from({ length: r.npages }, (_, i) => r.gfn + i))).toEqual(gfns);
        for (let i = 1; i < runs.length; i++)
          expect(runs[i].gfn).toBeGreaterThan(runs[i - 1].gfn + runs[i - 1].npages);
      }),
    );
  });
});

describe('MigrationLogReader refuses what it cannot trust', () => {
  it('a missing file, a text file, a foreign SQLite database', () => {
    const dir = tempDir();
    expect(refusal(join(dir, 'none.db')).problem).toBe('missing');
    writeFileSync(join(dir, 'text.db'), 'hello, not a database\n'.repeat(100));
    const notSqlite = refusal(join(dir, 'text.db'));
    expect(notSqlite.problem).toBe('not-sqlite');
    expect(notSqlite.message).toMatch(/not a SQLite database/);
    const foreign = new Database(join(dir, 'foreign.db'));
    foreign.exec('CREATE TABLE t (x)');
    foreign.close();
    expect(refusal(join(dir, 'foreign.db')).message).toMatch(
      /not a sevtrack migration log \(SQLite application_id 0x0, expected 0x53564d4c "SVML"\)/,
    );
  });

  it('a newer and an older version, naming both versions', () => {
    const dir = tempDir();
    const newer = join(dir, 'newer.db');
    writeLog(newer);
    const db = new Database(newer);
    db.pragma(`user_version = ${LOG_VERSION + 1}`);
    db.prepare("UPDATE meta SET value = ? WHERE key = 'version'").run(String(LOG_VERSION + 1));
    db.close();
    const e = refusal(newer);
    expect(e.problem).toBe('newer-version');
    expect(e.message).toMatch(
      `version ${LOG_VERSION + 1} is newer than this sevtrack reads (${LOG_VERSION})`,
    );
    // The first format (no meta table, user_version 1).
    const v1 = new Database(join(dir, 'v1.db'));
    v1.exec('CREATE TABLE migration (id INTEGER); CREATE TABLE events (id INTEGER)');
    v1.pragma('application_id = 1398164812');
    v1.pragma('user_version = 1');
    v1.close();
    expect(refusal(join(dir, 'v1.db')).problem).toBe('older-version');
  });

  it('a truncated file', () => {
    const path = join(tempDir(), 'm.db');
    writeLog(path);
    truncateSync(path, 3 * 4096);
    const e = refusal(path);
    expect(e.problem).toBe('damaged');
    expect(e.message).toMatch(/truncated or damaged/);
  });

  it('a changed, removed or added row, naming the commit and its first event', () => {
    const dir = tempDir();
    const orig = join(dir, 'orig.db');
    writeLog(orig);
    const cases: [string, string, RegExp][] = [
      // A send's perspective flipped: the evidence of a corrupted page rewritten.
      [
        'flip',
        "UPDATE page_runs SET encrypted = 1 - encrypted WHERE event_id = (SELECT id FROM events WHERE kind = 'send' LIMIT 1)",
        /commit 1 \(events 1-6; first: #1 start round 0\) does not match its digest/,
      ],
      [
        'delete',
        'DELETE FROM conversions WHERE seq = 12 AND gfn = 12',
        /commit 2 .*conversions row 3 is missing/,
      ],
      [
        'insert',
        "INSERT INTO events (t_us, kind, round, detail) VALUES (0, 'abort', 9, '{}')",
        /events row 15 is not covered by any commit/,
      ],
      ['meta', "UPDATE meta SET value = 'safe' WHERE key = 'protocol'", /meta changed after creation/],
    ];
    for (const [name, sql, message] of cases) {
      const path = join(dir, `${name}.db`);
      copyFileSync(orig, path);
      const db = new Database(path);
      db.exec(sql);
      db.close();
      const e = refusal(path);
      expect(e.problem, name).toBe('tampered');
      expect(e.message, name).toMatch(message);
    }
  });

  it('an event that breaks the rules, even with a valid chain', () => {
    const path = join(tempDir(), 'm.db');
    const log = MigrationLog.create(path, {
      role: 'source',
      npages: NPAGES,
      vcpus: 1,
      protocol: 'safe',
      verify: 'strict',
      params: {},
    });
    log.start({ generation: 0, migrationControl: 1 });
    log.harvest(0, [{ gfn: 60, npages: 8 }]); // past the guest's 64 pages
    log.close({});
    const e = refusal(path);
    expect(e.problem).toBe('invalid-event');
    expect(e.eventId).toBe(2);
    expect(e.message).toMatch(/event #2 .*run \(gfn 60, npages 8\) is outside the guest's 64 pages/);
  });
});
