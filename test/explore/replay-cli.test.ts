/**
 * `sevtrack replay` as a user runs it, on logs `sevtrack migrate --log`
 * wrote: exit 1 and the chains for a corrupted migration, exit 0 for a
 * clean one, the what-if, the plot, and exit 2 naming the first bad event
 * for a tampered, cut-off or rule-breaking log.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import { runCli } from '../support/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'sevtrack-replay-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MIGRATE = ['migrate', '--workload', 'churn', '--vcpus', '2', '--memory', '64M'];
let naive = '';
let safe = '';

beforeAll(async () => {
  for (let seed = 1; seed <= 8 && !naive; seed++) {
    const log = join(dir, `naive-${seed}.db`);
    const r = await runCli([...MIGRATE, '--protocol', 'naive', '--seed', String(seed), '--log', log]);
    if (r.code === 1) naive = log;
  }
  safe = join(dir, 'safe.db');
  const r = await runCli([...MIGRATE, '--protocol', 'safe', '--seed', '1', '--log', safe]);
  expect(r.code, r.stderr).toBe(0);
  expect(naive, 'naive corrupts within 8 seeds').not.toBe('');
}, 240_000);

/** A small hand-written log through the writer (valid chain), for the rule and role cases. */
function writeLog(path: string, role: 'source' | 'destination', body: (log: MigrationLog) => void): void {
  const log = MigrationLog.create(path, {
    role,
    npages: 64,
    vcpus: 1,
    protocol: 'safe',
    verify: 'strict',
    params: {},
  });
  log.start({ generation: 0, migrationControl: 1 });
  body(log);
  log.close({});
}

describe('sevtrack replay', () => {
  it('a corrupted migration: exit 1, every corrupted page with its chain, agreeing with the engine', async () => {
    const r = await runCli(['replay', naive, '--limit', '1000000']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toMatch(/^replay .*: naive, 16384 pages, 2 vCPUs, verify strict$/m);
    const n = Number(/CORRUPTED: (\d+) of 16384 compared pages/.exec(r.stdout)![1]);
    expect(n).toBeGreaterThan(0);
    expect(r.stdout).toMatch(new RegExp(`the engine recorded: ${n} pages corrupted \\(strict\\) — agrees`));
    const chains = r.stdout.split('\n').filter((l) => /^ {2}gfn 0x[0-9a-f]+: sent in round \d+/.test(l));
    expect(chains).toHaveLength(n);
    for (const l of chains)
      expect(l).toMatch(/c-bit state at sync seq \d+(, round 0's)?\).*at seq \d+.*it was never resent$/);

    const json = await runCli(['replay', naive, '--json', '--limit', '1000000']);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout);
    expect(report.outcome).toBe('corrupted');
    expect(report.corruptedCount).toBe(n);
    expect(report.agreesWithRecord).toBe(true);
    const shown = JSON.parse((await runCli(['log', 'show', naive, '--json'])).stdout);
    expect(report.corrupted.map((c: { gfn: number }) => c.gfn)).toEqual(
      shown.verification.corrupted.flatMap((x: { gfn: number; npages: number }) =>
        Array.from({ length: x.npages }, (_, i) => x.gfn + i),
      ),
    );
  }, 60_000);

  it('what-if: safe would have verified the broken migration; the plot is an SVG with every round and the pause', async () => {
    const plot = join(dir, 'naive.svg');
    const r = await runCli(['replay', naive, '--protocol', 'safe', '--plot', plot, '--limit', '0']);
    expect(r.code).toBe(1); // the recorded migration is still the corrupted one
    expect(r.stdout).toMatch(
      /what-if safe: would have verified \(strict\); \d+ pages sent \([+-]\d+ against the recorded \d+\), \d+ of them only for a c-bit change/,
    );
    const svg = readFileSync(plot, 'utf8');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    const rounds = JSON.parse((await runCli(['replay', naive, '--json', '--limit', '0'])).stdout).rounds;
    for (const x of rounds) expect(svg).toContain(`>round ${x.round}</text>`);
    expect(svg).toMatch(/>pause<\/text>/);
    expect(svg).toMatch(/>downtime [\d.]+ ms<\/text>/);
  }, 60_000);

  it('a clean migration: exit 0; under the recorded variant the what-if sends the same pages', async () => {
    const r = await runCli(['replay', safe, '--protocol', 'safe']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/clean: every one of 16384 compared pages/);
    expect(r.stdout).toMatch(/the engine recorded: verified \(strict\) — agrees/);
    expect(r.stdout).toMatch(/what-if safe: would have verified \(strict\); \d+ pages sent \(\+0 against/);
  }, 60_000);

  it('a tampered log: exit 2 naming the commit and its first event; nothing is written', async () => {
    const tampered = join(dir, 'tampered.db');
    copyFileSync(naive, tampered);
    const db = new Database(tampered);
    // Rewrite the evidence: a send of round 2 flipped to the other perspective.
    db.exec(
      "UPDATE page_runs SET encrypted = 1 - encrypted WHERE event_id = (SELECT id FROM events WHERE kind = 'send' AND round = 2 LIMIT 1)",
    );
    db.close();
    const plot = join(dir, 'tampered.svg');
    const r = await runCli(['replay', tampered, '--plot', plot]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      /commit \d+ \(events \d+-\d+; first: #\d+ harvest round 2\) does not match its digest/,
    );
    expect(existsSync(plot)).toBe(false);
  }, 60_000);

  it('a cut-off log: exit 2 naming the first missing event; a truncated file: exit 2', async () => {
    const cut = join(dir, 'cut.db');
    copyFileSync(naive, cut);
    const db = new Database(cut);
    const last = db.prepare('SELECT max(id) FROM events').pluck().get() as number;
    db.prepare('DELETE FROM events WHERE id > ?').run(last - 3);
    db.close();
    const r = await runCli(['replay', cut]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      new RegExp(
        `commit \\d+ \\(events \\d+-\\d+; first: #\\d+ \\w[\\w-]* round \\d+\\): events row ${last - 2} is missing`,
      ),
    );

    const truncated = join(dir, 'truncated.db');
    copyFileSync(naive, truncated);
    truncateSync(truncated, 8 * 4096);
    const t = await runCli(['replay', truncated]);
    expect(t.code).toBe(2);
    expect(t.stderr).toMatch(/truncated or damaged/);
  }, 60_000);

  it("an event that breaks the rules, a destination's log, bad flags: exit 2", async () => {
    const twice = join(dir, 'twice.db');
    writeLog(twice, 'source', (log) => {
      log.pause(1, {});
      log.pause(1, {});
    });
    const a = await runCli(['replay', twice]);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/event #3 \(pause\): a second pause/);

    const dest = join(dir, 'dest.db');
    writeLog(dest, 'destination', () => {});
    const b = await runCli(['replay', dest]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/destination's log of a two-process migration.*replay the source's --log/);

    for (const [flags, why] of [
      [
        ['--protocol', 'bogus'],
        /--protocol "bogus" is not one of safe, no-cbit-dirty, cbit-first, no-final-diff, naive/,
      ],
      [['--verify', 'loose'], /--verify "loose" is not one of strict, defined/],
      [['--limit', '-1'], /--limit "-1" must be an integer/],
      [['--plot', join(dir, 'no-such-dir', 'p.svg')], /--plot .*p\.svg cannot be written \(ENOENT/],
    ] as const) {
      const r = await runCli(['replay', safe, ...flags]);
      expect(r.code, flags.join(' ')).toBe(2);
      expect(r.stderr).toMatch(why);
    }
  }, 60_000);

  it('a migration that aborted before the pause: no verdict, exit 0', async () => {
    const aborted = join(dir, 'aborted.db');
    const state = new PageStateMap(64, true);
    writeLog(aborted, 'source', (log) => {
      log.harvest(0, []);
      log.sync(0, { seq: 0, previousSeq: 0, delta: [], state });
      log.cbitState(0, 'initial', state.serialize(), state);
      log.send(
        0,
        true,
        Array.from({ length: 64 }, (_, g) => g),
        1,
        'send',
        state,
      );
      log.roundEnd(0, { pagesSent: 64, bytes: 64 * 4096 });
      log.abort(1, 'the destination stopped answering');
    });
    const r = await runCli(['replay', aborted, '--protocol', 'safe']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /no verdict: the migration aborted before the pause \(the destination stopped answering\)/,
    );
  }, 60_000);
});
