import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { runCli, startCli, waitForStderr } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

const SUMMARY_FIELDS = [
  'verified',
  'resumed',
  'comparedPages',
  'skippedPages',
  'skipReason',
  'mismatchedPages',
  'mismatchedGfns',
  'converged',
  'estimatedDowntimeMs',
  'rounds',
  'pagesSent',
  'cbitRetransmits',
  'downtimeMs',
  'downtimePhases',
  'throughputMBps',
  'generationBefore',
  'generationAfter',
];

describe('sevtrack migrate', () => {
  it('runs the embedded default (256 MiB, 2 vCPUs, mixed, safe) and verifies', async () => {
    const r = await runCli(['migrate', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    for (const f of SUMMARY_FIELDS) expect(s).toHaveProperty(f);
    expect(s).toMatchObject({
      verified: true,
      comparedPages: 65536,
      skippedPages: 0,
      mismatchedPages: 0,
      mismatchedGfns: [],
      converged: true,
      protocol: 'safe',
      generationBefore: 0,
      generationAfter: 1,
    });
    expect(s.pagesSent).toBeGreaterThanOrEqual(65536);
  });

  it('prints progress and a summary for people, and writes the log', async () => {
    const log = join(tempDir(), 'm.db');
    const r = await runCli(['migrate', '--memory', '16M', '--workload', 'churn', '--log', log]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/round 0: 4096 pages sent in all/);
    expect(r.stdout).toMatch(/migration verified \(safe, strict\): 16 MiB guest/);
    expect(r.stdout).toMatch(/generation 0 -> 1/);
    expect(r.stdout).toMatch(
      /final reads [\d.]+ ms, final pages [\d.]+ ms, state [\d.]+ ms, destination's check and commit [\d.]+ ms/,
    );
    const db = new Database(log, { readonly: true });
    const kinds = (db.prepare('SELECT DISTINCT kind FROM events').all() as { kind: string }[]).map(
      (k) => k.kind,
    );
    expect(kinds).toEqual(
      expect.arrayContaining(['start', 'harvest', 'sync', 'send', 'pause', 'cbit-state', 'resume']),
    );
    const sent = db
      .prepare(
        "SELECT sum(npages) AS n FROM page_runs JOIN events ON events.id = event_id WHERE kind = 'send'",
      )
      .get() as { n: number };
    expect(sent.n).toBeGreaterThanOrEqual(4096);
    const end = db.prepare("SELECT detail FROM events WHERE kind = 'end'").get() as { detail: string };
    expect(JSON.parse(end.detail).verified).toBe(true);
    db.close();
    // Logs are evidence: an existing file is never overwritten.
    const again = await runCli(['migrate', '--memory', '1M', '--log', log]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already holds a database; pass a new --log path/);
  });

  it('exits 1 and lists gfns when an unsafe variant corrupts pages', async () => {
    // naive sends every page from the migration-start perspective: any page
    // churn converts and rewrites during the rounds arrives corrupted.
    const args = (seed: number) => [
      'migrate',
      '--memory',
      '16M',
      '--vcpus',
      '3',
      '--workload',
      'churn',
      '--protocol',
      'naive',
      '--max-downtime',
      '0',
      '--max-rounds',
      '6',
      '--on-no-convergence',
      'pause',
      '--seed',
      String(seed),
      '--json',
    ];
    let r = await runCli(args(1));
    for (let seed = 2; r.code === 0 && seed <= 8; seed++) r = await runCli(args(seed));
    expect(r.code).toBe(1);
    const s = JSON.parse(r.stdout);
    expect(s.verified).toBe(false);
    expect(s.mismatchedPages).toBeGreaterThan(0);
    // Every corrupted gfn is listed, not the first 16.
    expect(s.mismatchedGfns.length).toBe(s.mismatchedPages);
    expect(s.converged).toBe(false); // --max-downtime 0 is never met
    expect(r.stderr).toMatch(/\d+ of \d+ compared pages differ from the source's view at pause/);
  });

  it('under defined compares only what the guest wrote: an idle guest has only its kernel area (c-bit table, heartbeat)', async () => {
    // Every booted guest writes its kernel's own area, so a verdict always has
    // pages to compare; one over nothing is never "verified" (stream.test.ts).
    const r = await runCli(['migrate', '--memory', '16M', '--workload', 'idle', '--verify', 'defined']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pages compared 1, skipped 4095 \(content undefined/);
    const j = await runCli([
      'migrate',
      '--memory',
      '16M',
      '--workload',
      'churn',
      '--verify',
      'defined',
      '--json',
    ]);
    expect(j.code).toBe(0);
    const s = JSON.parse(j.stdout);
    expect(s.verified).toBe(true);
    expect(s.comparedPages).toBeGreaterThan(0);
    expect(s.comparedPages + s.skippedPages).toBe(4096);
  });

  it('aborts with exit 3 when --max-downtime cannot be met, or pauses anyway when told to', async () => {
    // A PSP of 2000 pages/s against a guest writing far faster.
    const args = ['migrate', '--memory', '16M', '--workload', 'write-heavy', '--psp-rate', '2000'];
    args.push('--max-downtime', '100', '--max-rounds', '3');
    const r = await runCli(args);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(
      /does not converge: after 3 rounds the guest dirties [\d.]+ MB\/s against a throughput of [\d.]+ MB\/s/,
    );
    expect(r.stderr).toMatch(/raise --max-downtime or --max-rounds/);
    expect(r.stderr).toMatch(/the source guest was not migrated and keeps running/);
    expect(r.stdout).not.toMatch(/verified/);
    // A script still gets one JSON object saying what happened.
    const j = await runCli([...args, '--json']);
    expect(j.code).toBe(3);
    expect(JSON.parse(j.stdout)).toMatchObject({
      aborted: true,
      code: 'ERR_NOT_CONVERGING',
      sourceGuestRunning: true,
    });
    const p = await runCli([...args, '--on-no-convergence', 'pause', '--json']);
    expect(p.code).toBe(0);
    const s = JSON.parse(p.stdout);
    expect(s).toMatchObject({ verified: true, converged: false });
    expect(s.estimatedDowntimeMs).toBeGreaterThan(100);
    expect(s.downtimeMs).toBeGreaterThan(0);
  });

  it('exits 2 naming the flag for bad flags', async () => {
    const cases: [string[], RegExp][] = [
      [
        ['--protocol', 'bogus'],
        /--protocol "bogus" is not one of safe, no-cbit-dirty, cbit-first, no-final-diff, naive/,
      ],
      [['--memory', '12Q'], /--memory "12Q" is not a size/],
      [['--workload', 'x'], /workload "x" is not one of/],
      [['--verify', 'loose'], /--verify "loose"/],
      [['--role', 'source'], /--role source needs --connect/],
      [
        ['--role', 'destination', '--transport', 'tcp', '--listen', 'nowhere'],
        /--listen "nowhere" must be HOST:PORT/,
      ],
      [['--backend', 'xen'], /--backend "xen" is not one of sim, kvm/],
      [['--vcpus', '0'], /--vcpus "0" must be an integer from 1 to 64/],
      [['--on-no-convergence', 'wait'], /--on-no-convergence "wait" is not one of abort, pause/],
      [['--read-cost', '-1'], /--read-cost/],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(['migrate', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(pattern);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });

  it('migrates between two processes over TCP on loopback', async () => {
    const dest = startCli([
      'migrate',
      '--role',
      'destination',
      '--transport',
      'tcp',
      '--listen',
      '127.0.0.1:0',
      '--json',
    ]);
    const port = Number((await waitForStderr(dest, /listening on 127\.0\.0\.1:(\d+)/))[1]);
    const src = await runCli([
      'migrate',
      '--role',
      'source',
      '--transport',
      'tcp',
      '--connect',
      `127.0.0.1:${port}`,
      '--memory',
      '32M',
      '--json',
    ]);
    expect(src.code).toBe(0);
    expect(JSON.parse(src.stdout)).toMatchObject({ verified: true, mismatchedPages: 0, generationAfter: 1 });
    expect(await dest.exit).toBe(0);
    expect(JSON.parse(dest.out())).toMatchObject({ verified: true, pagesReceived: expect.any(Number) });
  });

  it('a source with no destination to connect to aborts with exit 3', async () => {
    const r = await runCli([
      'migrate',
      '--role',
      'source',
      '--transport',
      'unix',
      '--connect',
      join(tempDir(), 'none.sock'),
    ]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot connect to the destination/);
  });
});
