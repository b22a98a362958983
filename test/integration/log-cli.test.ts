/**
 * `sevtrack migrate --log` and `sevtrack log show` as a user runs them: a
 * run killed with SIGKILL mid-way leaves a log that opens and holds every
 * round it finished; a complete log shows its rounds and verdict (text and
 * JSON); a file that is not a trustworthy log exits 2 naming why.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { LOG_VERSION } from '../../src/migration/log-schema.js';
import { runCli, startCli, waitForStderr } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

describe('migrate --log killed mid-way', () => {
  it('leaves a log that opens and holds every finished round', async () => {
    const log = join(tempDir(), 'killed.db');
    // The killed CLI cannot remove its temporary trackers: they go in a
    // directory of this test's own (removed after it), not in /tmp.
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = tempDir();
    const cli = startCli([
      'migrate',
      '--memory',
      '16M',
      '--workload',
      'churn',
      '--psp-rate',
      '20000',
      '--max-downtime',
      '0',
      '--max-rounds',
      '10000',
      '--on-no-convergence',
      'pause',
      '--log',
      log,
    ]);
    // Printed after round 3's ROUND_ACK, whose round-end is committed first.
    await waitForStderr(cli, /^round 3: /m, 60_000);
    cli.child.kill('SIGKILL');
    await cli.exit;
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;

    const r = MigrationLogReader.open(log);
    expect(r.contents.complete).toBe(false);
    const finished = r.events.filter((e) => e.kind === 'round-end').map((e) => e.round);
    expect(finished.slice(0, 4)).toEqual([0, 1, 2, 3]);
    // Each finished round's harvest, sync and sends are there; round 0 sent every page.
    for (const round of [0, 1, 2, 3]) {
      const kinds = new Set(r.events.filter((e) => e.round === round).map((e) => e.kind));
      expect([...kinds], `round ${round}`).toEqual(expect.arrayContaining(['harvest', 'sync', 'round-end']));
    }
    const sent0 = r.events
      .filter((e) => e.kind === 'send' && e.round === 0)
      .reduce((n, e) => n + (e.detail.pages as number), 0);
    expect(sent0).toBe(r.meta.npages);
    expect(r.contents.conversions.length).toBeGreaterThan(0);
    r.close();

    const shown = await runCli(['log', 'show', log]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/INCOMPLETE \(no end event/);
    expect(shown.stdout).toMatch(/round 3: harvested \d+/);
  }, 120_000);
});

describe('sevtrack log show', () => {
  it('shows a complete log as text and JSON, and refuses bad files with exit 2', async () => {
    const dir = tempDir();
    const log = join(dir, 'm.db');
    const run = await runCli([
      'migrate',
      '--memory',
      '16M',
      '--workload',
      'churn',
      '--protocol',
      'naive',
      '--max-downtime',
      '0',
      '--max-rounds',
      '4',
      '--on-no-convergence',
      'pause',
      '--log',
      log,
    ]);
    expect([0, 1]).toContain(run.code); // naive may or may not corrupt this seed
    const text = await runCli(['log', 'show', log]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/migration log v2, source, 4096 pages, 2 vCPUs, protocol naive/);
    expect(text.stdout).toMatch(/round 4 \(paused\)/);
    const json = await runCli(['log', 'show', log, '--json']);
    expect(json.code).toBe(0);
    const s = JSON.parse(json.stdout);
    expect(s.complete).toBe(true);
    expect(s.rounds).toHaveLength(5);
    expect(s.verification.mismatched).toBe(
      s.verification.corrupted.reduce((n: number, r: { npages: number }) => n + r.npages, 0),
    );
    expect(s.events[0].kind).toBe('start');
    expect(s.events.at(-1).kind).toBe('end');

    writeFileSync(join(dir, 'text.db'), 'not a log at all\n'.repeat(300));
    const newer = join(dir, 'newer.db');
    copyFileSync(log, newer);
    let db = new Database(newer);
    db.pragma(`user_version = ${LOG_VERSION + 1}`);
    db.prepare("UPDATE meta SET value = ? WHERE key = 'version'").run(String(LOG_VERSION + 1));
    db.close();
    const tampered = join(dir, 'tampered.db');
    copyFileSync(log, tampered);
    db = new Database(tampered);
    db.exec('UPDATE events SET round = round WHERE 0; UPDATE page_runs SET gfn = gfn + 1 WHERE id = 2');
    db.close();
    for (const [file, why] of [
      [join(dir, 'text.db'), /not a SQLite database/],
      [
        newer,
        new RegExp(
          `version ${LOG_VERSION + 1} is newer than this sevtrack reads \\(${LOG_VERSION}\\); upgrade sevtrack`,
        ),
      ],
      [tampered, /commit 1 \(events 1-\d+; first: #1 start round 0\) does not match its digest/],
      [join(dir, 'missing.db'), /no such file/],
    ] as const) {
      const r = await runCli(['log', 'show', file]);
      expect(r.code, file).toBe(2);
      expect(r.stderr, file).toMatch(why);
      expect(r.stderr, file).toMatch(/\[ERR_BAD_DATABASE\]/);
    }
  }, 120_000);
});
