/**
 * Chains through the CLI, as a user runs them: `--hops 3` in one process,
 * and a chain of three processes over unix sockets, where the
 * middle destination resumes the guest and migrates it onward
 * (`--then-connect`). Real processes, real sockets, real SQLite files.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KVM_MIGRATION_READY } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { runCli, startCli, waitForStderr } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

const SMALL = ['--memory', '8M', '--vcpus', '2', '--workload', 'mixed'];

describe('sevtrack migrate --hops', () => {
  it('--hops 3 --json verifies every hop, bumps the generation once per hop, and the guest runs on at each destination', async () => {
    const r = await runCli(['migrate', ...SMALL, '--hops', '3', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.verified).toBe(true);
    expect(s.hops).toHaveLength(3);
    expect(s.generationAfter - s.generationBefore).toBe(3);
    expect(s.total).toMatchObject({ hops: 3, verifiedHops: 3 });
    for (const [i, h] of s.hops.entries()) {
      expect(h.hop).toBe(i + 1);
      expect(h.verified).toBe(true);
      expect(h.generationAfter).toBe(s.generationBefore + i + 1);
      expect(h.trackerMatchesGuest).toBe(true);
      expect(h.perspectiveMismatchGfns).toEqual([]);
      // The counter in guest memory moves on after every resume, from where the migrated memory had it.
      expect(h.heartbeatAfter).toBeGreaterThan(h.heartbeatAtResume);
      if (i > 0) expect(h.heartbeatAtResume).toBeGreaterThan(s.hops[i - 1].heartbeatAtResume);
    }
  });

  it('prints each hop and the chain in text', async () => {
    const r = await runCli(['migrate', ...SMALL, '--hops', '2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^hop 1:/m);
    expect(r.stdout).toMatch(/^hop 2:/m);
    expect(r.stdout).toMatch(/the guest runs on: heartbeat \d+ at resume -> \d+/);
    expect(r.stdout).toMatch(/chain verified: 2 of 2 hops verified.*generation 0 -> 2/);
  });

  it('refuses --hops where it cannot run, naming the flag, and a bad count (exit 2)', async () => {
    const zero = await runCli(['migrate', ...SMALL, '--hops', '0']);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/--hops/);
    const src = await runCli([
      'migrate',
      ...SMALL,
      '--hops',
      '2',
      '--role',
      'source',
      '--connect',
      '/nonexistent',
    ]);
    expect(src.code).toBe(2);
    expect(src.stderr).toMatch(/--hops runs every hop in this process/);
    const relay = await runCli(['migrate', ...SMALL, '--then-connect', '/tmp/x.sock']);
    expect(relay.code).toBe(2);
    expect(relay.stderr).toMatch(/--then-connect is for --role destination/);
  });
});

describe('a chain across processes', () => {
  it('source -> destination that then connects to a third process: verified end to end, the last tracker holds the VM', async () => {
    const dir = tempDir();
    const bSock = join(dir, 'b.sock');
    const cSock = join(dir, 'c.sock');
    const cDb = join(dir, 'c.db');
    const destination = (listen: string, ...extra: string[]) =>
      startCli([
        'migrate',
        ...SMALL,
        '--role',
        'destination',
        '--transport',
        'unix',
        '--listen',
        listen,
        '--json',
        ...extra,
      ]);
    const c = destination(cSock, '--db', cDb);
    await waitForStderr(c, /destination listening on/);
    const b = destination(bSock, '--then-connect', cSock);
    await waitForStderr(b, /destination listening on/);
    const a = await runCli([
      'migrate',
      ...SMALL,
      '--role',
      'source',
      '--transport',
      'unix',
      '--connect',
      bSock,
      '--json',
    ]);
    expect(a.code).toBe(0);
    expect(await b.exit).toBe(0);
    expect(await c.exit).toBe(0);
    const sa = JSON.parse(a.stdout);
    const sb = JSON.parse(b.out());
    const sc = JSON.parse(c.out());
    expect(sa.verified).toBe(true);
    expect(sa.generationAfter).toBe(sa.generationBefore + 1);
    // B received, resumed (its guest ran), then migrated the running guest to C.
    expect(sb.verified).toBe(true);
    expect(sb.heartbeatAfter).toBeGreaterThan(sb.heartbeatAtResume);
    expect(sb.onward.verified).toBe(true);
    expect(sb.onward.generationBefore).toBe(sa.generationAfter);
    expect(sc.verified).toBe(true);
    expect(sc.generationAfter).toBe(sa.generationAfter + 1);
    expect(sc.heartbeatAtResume).toBeGreaterThan(sb.heartbeatAtResume);
    // C's --db holds the VM: its state was applied and its c-bit state recorded.
    expect(existsSync(cDb)).toBe(true);
    const store = CbitStore.open(cDb, { readonly: true });
    try {
      expect(store.vmIds()).toEqual([1]);
      expect(store.info(1).npages).toBe(2048);
      // READY travelled with the guest and is in C's tracker.
      expect(store.migrationControl(1)).toBe(KVM_MIGRATION_READY);
      // The resumed guest's own conversions went into C's tracker after the migrated state.
      expect(store.info(1).lastSeq).toBeGreaterThan(0);
    } finally {
      store.close();
    }
  });
});
