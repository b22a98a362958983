import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { runCli } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

describe('sevtrack state', () => {
  it('shows VMs, counts, paged ranges, the last sync and the log length', async () => {
    const db = join(tempDir(), 'h.db');
    const store = CbitStore.open(db);
    store.registerVm(4, 65536);
    store.applyBatch(4, [
      { gfn: 10, npages: 5, encrypted: false },
      { gfn: 100, npages: 1, encrypted: false },
    ]);
    store.sync(4);
    store.applyBatch(4, [{ gfn: 200, npages: 3, encrypted: false }]);
    store.close();
    const r = await runCli(['state', '--db', db, '--json', '--limit', '3']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.vms[0]).toMatchObject({
      id: 4,
      npages: 65536,
      sharedPages: 9,
      encryptedPages: 65527,
      lastSyncSeq: 2,
      logLength: 3,
      ready: false,
      nextGfn: 100,
    });
    expect(out.vms[0].ranges).toEqual([
      { gfn: 0, npages: 10, encrypted: true },
      { gfn: 10, npages: 5, encrypted: false },
      { gfn: 15, npages: 85, encrypted: true },
    ]);
    const text = await runCli(['state', '--db', db, '--from', '15', '--limit', '2']);
    expect(text.stdout).toMatch(
      /vm 4: 65536 pages \(256 MiB\), 65527 encrypted, 9 shared, 7 ranges; change log 3/,
    );
    expect(text.stdout).toMatch(/gfn 15 \+85 encrypted\n {2}gfn 100 \+1 shared\n {2}\.\.\. more: --from 101/);
  });

  it('exits 2 with one line for a file that is not a database, an unknown VM, or a bad flag', async () => {
    const dir = tempDir();
    const junk = join(dir, 'junk.db');
    writeFileSync(junk, 'x'.repeat(200));
    const bad = await runCli(['state', '--db', junk]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/junk\.db: not an SQLite database/);
    const missing = await runCli(['state', '--db', join(dir, 'none.db')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/none\.db: cannot open/);
    const db = join(dir, 'ok.db');
    CbitStore.open(db).close();
    const unknown = await runCli(['state', '--db', db, '--vm', '3']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/vm 3 is not registered/);
    const flag = await runCli(['state', '--db', db, '--limit', 'many']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/--limit "many" must be an integer/);
  });
});
