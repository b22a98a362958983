/**
 * Source and destination in two network namespaces joined by a veth pair;
 * the link goes down mid-stream. Both sides must notice (no data for
 * --peer-timeout) and abort with exit 3. Needs root and `ip netns`; skipped
 * with the reason otherwise.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { type RunningCli, startCli, waitForStderr } from '../support/cli.js';

const tag = `${process.pid % 10000}`;
const NS_A = `sevtrack-a-${tag}`;
const NS_B = `sevtrack-b-${tag}`;
// Link-local addresses inside namespaces this test creates and removes.
const ADDR_A = '169.254.213.1';
const ADDR_B = '169.254.213.2';

function ip(...args: string[]): { ok: boolean; err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  return { ok: r.status === 0, err: `${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
}

function setUp(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: network namespaces need CAP_SYS_ADMIN';
  const probe = ip('netns', 'add', NS_A);
  if (!probe.ok) return `cannot create a network namespace (${probe.err || 'ip netns add failed'})`;
  const steps: string[][] = [
    ['netns', 'add', NS_B],
    ['link', 'add', `sva${tag}`, 'type', 'veth', 'peer', 'name', `svb${tag}`],
    ['link', 'set', `sva${tag}`, 'netns', NS_A],
    ['link', 'set', `svb${tag}`, 'netns', NS_B],
    ['-n', NS_A, 'addr', 'add', `${ADDR_A}/24`, 'dev', `sva${tag}`],
    ['-n', NS_B, 'addr', 'add', `${ADDR_B}/24`, 'dev', `svb${tag}`],
    ['-n', NS_A, 'link', 'set', `sva${tag}`, 'up'],
    ['-n', NS_B, 'link', 'set', `svb${tag}`, 'up'],
    ['-n', NS_A, 'link', 'set', 'lo', 'up'],
    ['-n', NS_B, 'link', 'set', 'lo', 'up'],
  ];
  for (const s of steps) {
    const r = ip(...s);
    if (!r.ok) return `cannot set up the veth pair (ip ${s.join(' ')}: ${r.err})`;
  }
  return undefined;
}

// Set up at load time so the test can be skipped with the reason stated.
const skipReason = setUp();
if (skipReason) console.warn(`netns test skipped: ${skipReason}`);
afterAll(() => {
  ip('netns', 'del', NS_A);
  ip('netns', 'del', NS_B);
});

function inNamespace(ns: string, args: string[]): RunningCli {
  return startCli(args, ['ip', 'netns', 'exec', ns]);
}

describe('migration across network namespaces', () => {
  it.skipIf(skipReason !== undefined)(
    'aborts on both sides with exit 3 when the link goes down mid-stream',
    async () => {
      const dest = inNamespace(NS_B, [
        'migrate',
        '--role',
        'destination',
        '--transport',
        'tcp',
        '--listen',
        `${ADDR_B}:7700`,
        '--peer-timeout',
        '3000',
      ]);
      await waitForStderr(dest, /listening on/);
      const src = inNamespace(NS_A, [
        'migrate',
        '--role',
        'source',
        '--transport',
        'tcp',
        '--connect',
        `${ADDR_B}:7700`,
        '--memory',
        '64M',
        '--psp-rate',
        '4000',
        '--peer-timeout',
        '3000',
        // Every round up to --max-rounds (30): the stream goes on for seconds after round 0.
        '--max-downtime',
        '0',
      ]);
      // Mid-stream: once round 0 is done and the live rounds are under way.
      await waitForStderr(src, /^round 0: /m);
      expect(ip('-n', NS_A, 'link', 'set', `sva${tag}`, 'down').ok).toBe(true);
      const [srcCode, destCode] = await Promise.all([src.exit, dest.exit]);
      expect(srcCode, src.err()).toBe(3);
      expect(src.err()).toMatch(/peer|link/);
      expect(destCode, dest.err()).toBe(3);
      expect(dest.err()).toMatch(/sent nothing for 3000 ms|link or the peer is down|closed/);
    },
    60_000,
  );
});
