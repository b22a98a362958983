/**
 * SIGINT/SIGTERM cancel a migration cleanly (src/cli/cancel-on-signals.ts):
 * the source stops between two frames, its guest runs on, the log records the
 * abort with the signal, and the CLI exits 3 as for any abort. The library's
 * AbortSignal does the same without a process.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError } from '../../src/common/errors.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { DEFAULT_PARAMS, migrateLocally } from '../../src/migration/run-migration.js';
import { startCli } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

// 4096 encrypted pages through a PSP of 500 pages/s: the bulk round alone takes about 8 s.
const SLOW = ['migrate', '--memory', '16M', '--workload', 'idle', '--psp-rate', '500'];

const savedTmp = process.env.TMPDIR;
afterEach(() => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
});

describe('cancelling a migration', () => {
  for (const [signal, transport] of [
    ['SIGINT', 'inproc'],
    ['SIGTERM', 'inproc'],
    ['SIGINT', 'unix'],
  ] as const) {
    it(`${signal} (${transport}): the source aborts cleanly, logs why, exits 3 and leaves nothing behind`, async () => {
      const log = join(tempDir(), 'cancel.db');
      // The CLI's os.tmpdir() (the destination's temporary tracker database, a unix run's socket directory).
      const tmp = tempDir();
      process.env.TMPDIR = tmp;
      const cli = startCli([...SLOW, '--transport', transport, '--log', log, '--json']);
      // The log exists once the source starts, before its guest boots (the
      // handlers are installed before it): the cancel lands while the guest
      // boots or early in the bulk round, and is honoured at once either way.
      await waitFor(() => existsSync(log), 'the migration log');
      cli.child.kill(signal);
      expect(await cli.exit).toBe(3);
      expect(cli.err()).toMatch(new RegExp(`${signal}: cancelling the migration`));
      const out = JSON.parse(cli.out());
      expect(out).toMatchObject({ aborted: true, code: 'ERR_CANCELLED', sourceGuestRunning: true });
      expect(out.reason).toMatch(
        new RegExp(`cancelled by ${signal}; the source guest was not migrated and keeps running`),
      );
      const r = MigrationLogReader.open(log);
      expect(r.events.find((e) => e.kind === 'abort')?.detail.reason).toBe(`cancelled by ${signal}`);
      r.close();
      expect(readdirSync(tmp).filter((n) => n.startsWith('sevtrack-'))).toEqual([]);
    }, 60_000);
  }

  for (const transport of ['inproc', 'unix'] as const) {
    it(`through the library (${transport}): a signal aborted mid-round stops both send loops before their next frame, and nothing is left behind`, async () => {
      // A private os.tmpdir(): the destination's temporary tracker database
      // and a unix run's socket directory go there, and must be gone after.
      const tmp = tempDir();
      process.env.TMPDIR = tmp;
      const controller = new AbortController();
      let framesAfterAbort = 0;
      const run = migrateLocally({
        ...DEFAULT_PARAMS,
        transport,
        memoryBytes: 16 * 2 ** 20,
        workload: 'idle',
        batchPages: 64,
        signal: controller.signal,
        onPages: (round, sent, total) => {
          if (controller.signal.aborted) framesAfterAbort++;
          else if (round === 0 && sent >= 512 && sent < total)
            controller.abort(new CancelledError('cancelled by the test'));
        },
      });
      await expect(run).rejects.toThrow(CancelledError);
      await expect(run).rejects.toThrow('cancelled by the test');
      // The encrypted and the shared loop may each have had one frame under way.
      expect(framesAfterAbort).toBeLessThanOrEqual(2);
      expect(readdirSync(tmp).filter((n) => n.startsWith('sevtrack-'))).toEqual([]);
    }, 60_000);
  }

  it('through the library, while the source boots and the destination prepares its memory: no round runs, the log begins with the abort, nothing is left behind', async () => {
    const log = join(tempDir(), 'early.db');
    const tmp = tempDir();
    process.env.TMPDIR = tmp;
    const controller = new AbortController();
    const rounds: number[] = [];
    const run = migrateLocally({
      ...DEFAULT_PARAMS,
      log,
      // 1 GiB: the destination faults its memory in and the 'boot' guest runs
      // 20,000 conversions in its setup, each for far longer than one tick.
      memoryBytes: 2 ** 30,
      workload: 'boot',
      signal: controller.signal,
      onRound: (r) => rounds.push(r.round),
    });
    setImmediate(() => controller.abort(new CancelledError('cancelled by the test')));
    await expect(run).rejects.toThrow('cancelled by the test');
    expect(rounds).toEqual([]);
    // A log must begin with start, or with abort for a migration that never started.
    const r = MigrationLogReader.open(log);
    expect(r.events.map((e) => e.kind)).toEqual(['abort', 'end']);
    expect(r.events[0].detail.reason).toBe('cancelled by the test');
    r.close();
    expect(readdirSync(tmp).filter((n) => n.startsWith('sevtrack-'))).toEqual([]);
  }, 60_000);
});
