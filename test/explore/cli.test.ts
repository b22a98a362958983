import { describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';

describe('sevtrack explore', () => {
  it('--json: one object with the run and a row per protocol, exit 0 when the table holds', async () => {
    const r = await runCli(['explore', '--schedules', '2000', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({
      mode: 'random',
      contract: 'kept',
      verify: 'strict',
      vcpus: 2,
      pages: 2,
      seed: 1,
      opsPerVcpu: 2,
      maxRounds: 3,
      asExpected: true,
    });
    expect(typeof report.elapsedMs).toBe('number');
    expect(report.protocols.map((p: { protocol: string }) => p.protocol)).toEqual([
      'safe',
      'no-cbit-dirty',
      'cbit-first',
      'no-final-diff',
      'naive',
    ]);
    for (const p of report.protocols) {
      expect(Object.keys(p).sort()).toEqual(
        ['asExpected', 'corrupted', 'counterexample', 'expected', 'protocol', 'schedules'].sort(),
      );
      expect(p.schedules).toBe(2000);
      if (p.protocol === 'safe') {
        expect(p).toMatchObject({ expected: 'never', corrupted: 0, counterexample: null, asExpected: true });
      } else {
        expect(p.expected).toBe('corrupts');
        expect(p.corrupted).toBeGreaterThan(0);
        expect(Object.keys(p.counterexample).sort()).toEqual(
          ['corruptedGfns', 'events', 'schedule', 'steps', 'timeline'].sort(),
        );
        expect(p.counterexample.timeline.some((l: string) => l.includes('CORRUPTED'))).toBe(true);
      }
    }
  });

  it('prints the table and the broken-contract counterexample for safe', async () => {
    const r = await runCli([
      'explore',
      '--protocol',
      'safe',
      '--contract',
      'broken',
      '--verify',
      'defined',
      '--schedules',
      '3000',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/safe\s+3000\s+\d+\s+corrupts\s+as expected/);
    expect(r.stdout).toMatch(/shortest counterexample for safe \(\d+ events\):/);
    expect(r.stdout).toMatch(/notification for gfn \d is still in flight/);
    expect(r.stdout).toMatch(/gfn \d CORRUPTED/);
  });

  it('--exhaustive searches every schedule of a small model', async () => {
    const r = await runCli(['explore', '--exhaustive', '--vcpus', '1', '--pages', '2', '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.mode).toBe('exhaustive');
    for (const p of report.protocols) expect(p.states).toBeGreaterThan(0);
  });

  it('exits 1 naming the protocol when a negative control finds nothing', async () => {
    const r = await runCli([
      'explore',
      '--protocol',
      'cbit-first',
      '--verify',
      'defined',
      '--schedules',
      '1',
    ]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/cbit-first\s+1\s+0\s+corrupts\s+NOT AS EXPECTED/);
    expect(r.stderr).toMatch(/cbit-first corrupted no schedule where docs\/design.md expects corruption/);
  });

  it('exits 2 naming the flag for bad flags', async () => {
    const cases: [string[], RegExp][] = [
      [['--protocol', 'fast'], /--protocol "fast" is not one of safe, no-cbit-dirty/],
      [['--schedules', '0'], /--schedules "0" must be an integer from 1/],
      [['--vcpus', '5'], /--vcpus "5" must be an integer from 1 to 4/],
      [['--pages', 'x'], /--pages "x" must be an integer/],
      [['--contract', 'bent'], /--contract "bent" is not one of kept, broken/],
      [['--verify', 'loose'], /--verify "loose" is not one of strict, defined/],
      [['--contract', 'broken', '--vcpus', '1'], /--contract broken needs --vcpus 2 or more/],
      [['--exhaustive', '--schedules', '10'], /--schedules and --exhaustive exclude each other/],
      [['--exhaustive', '--vcpus', '3', '--pages', '2'], /--exhaustive searches at most 1 page with 3 vCPUs/],
      [['--frobnicate'], /unknown option/],
    ];
    for (const [flags, message] of cases) {
      const r = await runCli(['explore', ...flags]);
      expect(r.code, flags.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).toBe('');
    }
  });
});
