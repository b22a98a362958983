/**
 * `sevtrack migrate --service` when the service fails it: killed (kill -9)
 * or shut down (SIGTERM) mid-migration, the migration aborts with exit 3 and
 * the source guest running, and the database keeps every acknowledged change
 * and the migration's record.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, startCli, waitForStderr } from '../support/cli.js';
import { startServe } from '../support/serve.js';
import { stateOf } from '../support/service-state.js';
import { tempDir } from '../support/tmp.js';

/**
 * Starts a service and a migration of vm against it, and sends the service
 * `signal` once round 0 is reported (a slow PSP keeps the pre-copy rounds
 * going well after that). Resolves with the migrate process and the database.
 */
async function stopServiceMidMigration(vm: number, signal: NodeJS.Signals) {
  const dir = tempDir();
  const db = join(dir, 'host.db');
  const socket = join(dir, 'host.sock');
  const serve = await startServe(db, socket, ['--quiet']);
  // Pre-copy rounds go on until the service is gone (--max-downtime 0: no
  // pause before --max-rounds), so it always goes away during a live round.
  // With the default target the source could pause first, while a SIGTERM'd
  // service still drained its clients (seen once in a full run): a guest
  // caught in its pause by the loss stays paused ("NOT running").
  const cli = startCli([
    ...['migrate', '--service', socket, '--vm', String(vm)],
    ...['--memory', '16M', '--psp-rate', '3000', '--workload', 'churn'],
    ...['--max-downtime', '0', '--max-rounds', '10000', '--on-no-convergence', 'pause'],
  ]);
  await waitForStderr(cli, /round 0: /);
  serve.child.kill(signal);
  return { db, socket, serve, cli };
}

/** What a failed exit assertion prints: the signal, if one ended the process (exit null), and its stderr. */
function exitReport(cli: ReturnType<typeof startCli>): string {
  return `migrate ended by signal ${cli.child.signalCode ?? 'none'}; its stderr:\n${cli.err()}`;
}

describe('sevtrack migrate --service when the service fails', () => {
  it('kill -9 of the service mid-migration aborts it (exit 3), the source guest running; a restart holds everything acknowledged', async () => {
    const { db, socket, serve, cli } = await stopServiceMidMigration(5, 'SIGKILL');
    expect((await serve.exited).signal).toBe('SIGKILL');
    expect(await cli.exit, exitReport(cli)).toBe(3);
    expect(cli.out()).toBe('');
    const err = cli.err();
    expect(err).toMatch(/migration aborted: the host service at .* went away/);
    expect(err).toMatch(/the source guest is running, unpaused, its memory and c-bit state intact/);
    expect(err).toMatch(/\[ERR_SERVICE_LOST\]/);
    const m =
      /acknowledged c-bit changes of vm 5 up to seq (\d+), the migration's last sync was seq (\d+)/.exec(err);
    expect(m).not.toBeNull();
    const acked = Number(m![1]);
    const lastSync = Number(m![2]);
    expect(acked).toBeGreaterThan(0);
    expect(lastSync).toBeGreaterThan(0);

    // Restarted, the service holds every acknowledged change and the migration's syncs.
    const again = await startServe(db, socket, ['--quiet']);
    try {
      const vm = await stateOf(db, 5);
      expect(vm.lastSeq).toBeGreaterThanOrEqual(acked);
      expect(vm.migrations).toHaveLength(1);
      expect(vm.migrations[0]).toMatchObject({ outcome: 'interrupted' });
      // Every sync the source was answered is held. The kill may also have
      // come between a sync's commit and its reply (more likely on a slow
      // disk): then the service holds that one sync more, never two, since
      // the source has one request in flight at most.
      const syncs = vm.migrations[0].syncs.map((x) => x.seq);
      expect(syncs).toContain(lastSync);
      expect(syncs.filter((seq) => seq > lastSync).length).toBeLessThanOrEqual(1);
      expect(vm.lastSyncSeq).toBe(syncs.at(-1));
      expect((await runCli(['state', '--db', db, '--check'])).code).toBe(0);
    } finally {
      again.child.kill('SIGTERM');
      await again.exited;
    }
  });

  it('a service shut down mid-migration (SIGTERM) aborts it too, and keeps its record', async () => {
    const { db, serve, cli } = await stopServiceMidMigration(2, 'SIGTERM');
    expect(await cli.exit, exitReport(cli)).toBe(3);
    expect(cli.err()).toMatch(/the host service at .* went away \(it is shutting down\)/);
    expect(cli.err()).toMatch(/the source guest is running, unpaused/);
    expect((await serve.exited).code).toBe(0);
    const vm = await stateOf(db, 2);
    // The drain ended the record before the service stopped.
    expect(vm.migrations[0]).toMatchObject({
      outcome: 'abandoned',
      message: 'the host service shut down while the migration was open',
    });
    expect(vm.migrations[0].syncs.length).toBeGreaterThan(0);
  });
});
