/**
 * A one-process migration over a real socket (`--transport unix|tcp`
 * without --role): the destination runs on its own worker thread and
 * listens; the source connects once it is ready. The guest arrives
 * verified, and the run leaves no socket directory behind.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/common/errors.js';
import { DEFAULT_PARAMS, migrateLocally } from '../../src/migration/run-migration.js';
import { tempDir } from '../support/tmp.js';

// The run's socket directory goes under os.tmpdir(): a private one per test,
// so other test files' runs cannot show up in it.
const savedTmp = process.env.TMPDIR;
afterEach(() => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
});

describe('one-process migration over a socket', () => {
  for (const transport of ['unix', 'tcp'] as const) {
    it(`over ${transport}: verified, the destination resumed, nothing left behind`, async () => {
      const tmp = tempDir();
      process.env.TMPDIR = tmp;
      const { summary, destination } = await migrateLocally({
        ...DEFAULT_PARAMS,
        transport,
        memoryBytes: 16 * 2 ** 20,
        warmupMs: 50,
      });
      expect(summary).toMatchObject({ verified: true, mismatchedPages: 0, generationAfter: 1 });
      expect(destination).toMatchObject({ verified: true, resumed: true });
      expect(destination.pagesReceived).toBe(summary.pagesSent);
      // Neither the socket's directory nor the destination's temporary tracker database.
      expect(readdirSync(tmp).filter((n) => n.startsWith('sevtrack-'))).toEqual([]);
    });
  }

  it('over unix with sysgenid watchers (a library run): the destination that runs them acknowledges every one', async () => {
    const { summary, destination } = await migrateLocally({
      ...DEFAULT_PARAMS,
      transport: 'unix',
      memoryBytes: 16 * 2 ** 20,
      warmupMs: 50,
      watchers: 3,
    });
    expect(summary.verified).toBe(true);
    expect(destination.resume).toMatchObject({ watchersAcked: 3, watchersTimedOut: 0 });
  });

  it('over unix from a temp directory too deep for a socket address: refused before anything starts, naming TMPDIR', async () => {
    const tmp = tempDir();
    const deep = join(tmp, 'd'.repeat(100));
    mkdirSync(deep);
    process.env.TMPDIR = deep;
    const run = migrateLocally({ ...DEFAULT_PARAMS, transport: 'unix', memoryBytes: 16 * 2 ** 20 });
    await expect(run).rejects.toThrow(InvalidArgumentError);
    await expect(run).rejects.toThrow(/at most 107: set TMPDIR to a shorter directory/);
    await expect(run).rejects.toMatchObject({ field: 'TMPDIR', code: 'ERR_INVALID_ARGUMENT' });
    expect(readdirSync(deep)).toEqual([]);
  });
});
