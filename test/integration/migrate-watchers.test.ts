/**
 * sysgenid wired into the migration (#13 item 6), through the CLI: tracked
 * watchers inside the simulated guest, bumped on resume; the overseer keeps
 * the VM quiesced until they acknowledged or --watcher-timeout passed.
 */
import { describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';

const SMALL = ['--memory', '8M', '--vcpus', '2'];

describe('sevtrack migrate --watchers', () => {
  it('--watchers 3 --stuck-watchers 1 --watcher-timeout 500: 2 acked, 1 timed out, available only after the timeout', async () => {
    const r = await runCli([
      'migrate',
      ...SMALL,
      '--watchers',
      '3',
      '--stuck-watchers',
      '1',
      '--watcher-timeout',
      '500',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.verified).toBe(true);
    expect(s.watchersAcked).toBe(2);
    expect(s.watchersTimedOut).toBe(1);
    // Declared available once the stuck watcher's timeout passed, not before.
    expect(s.timeToAvailableMs).toBeGreaterThanOrEqual(500);
    expect(s.generationAfter).toBe(s.generationBefore + 1);
  });

  it('prints the watchers in the text summary; every watcher acking needs no timeout', async () => {
    const r = await runCli(['migrate', ...SMALL, '--watchers', '2', '--watcher-timeout', '0']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/watchers: 2 acked, 0 timed out; available [\d.]+ ms after the bump/);
  });

  it('watchers follow the guest from hop to hop: one bump and one wait per hop', async () => {
    const r = await runCli([
      'migrate',
      ...SMALL,
      '--hops',
      '2',
      '--watchers',
      '2',
      '--stuck-watchers',
      '1',
      '--watcher-timeout',
      '200',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.hops.map((h: { generationAfter: number }) => h.generationAfter)).toEqual([1, 2]);
    for (const h of s.hops) {
      expect(h.watchersAcked).toBe(1);
      expect(h.watchersTimedOut).toBe(1);
      expect(h.timeToAvailableMs).toBeGreaterThanOrEqual(200);
    }
  });

  it('refuses more stuck watchers than watchers, and a negative timeout, naming the flag (exit 2)', async () => {
    const more = await runCli(['migrate', ...SMALL, '--watchers', '1', '--stuck-watchers', '2']);
    expect(more.code).toBe(2);
    expect(more.stderr).toMatch(/--stuck-watchers 2 is more than --watchers 1/);
    expect(more.stdout).toBe('');
    const neg = await runCli(['migrate', ...SMALL, '--watchers', '1', '--watcher-timeout', '-5']);
    expect(neg.code).toBe(2);
    expect(neg.stderr).toMatch(/--watcher-timeout/);
  });
});
