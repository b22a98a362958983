/**
 * `sevtrack serve` refuses bad setups before listening (exit 2 with the
 * reason), owns its database alone, and creates its files private whatever
 * the umask (docs/host-protocol.md "Persistence"; issue items 4, 5, 8).
 */
import { chmodSync, chownSync, existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HostServiceClient } from '../../src/host/service-client.js';
import { spawnServe, startServe, UNPRIVILEGED } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

/** A temp folder the unprivileged user owns. */
function ownedDir(): string {
  const dir = tempDir();
  if (UNPRIVILEGED.uid !== undefined) chownSync(dir, UNPRIVILEGED.uid, UNPRIVILEGED.gid!);
  return dir;
}

async function refused(args: string[], as = UNPRIVILEGED) {
  const p = spawnServe([...args, '--quiet'], as);
  const { code } = await p.exited;
  return { code, stderr: p.stderr() };
}

describe('one owner per database', () => {
  it('a second serve on the same database, also through a symlink, exits 2 naming the holder pid; the lock dies with the holder', async () => {
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const first = await startServe(db, join(dir, 'a.sock'), ['--quiet']);
    try {
      const second = await refused(['--db', db, '--socket', join(dir, 'b.sock')], {});
      expect(second.code).toBe(2);
      expect(second.stderr).toContain(`pid ${first.child.pid}`);
      symlinkSync(db, join(dir, 'link.db'));
      const viaLink = await refused(['--db', join(dir, 'link.db'), '--socket', join(dir, 'c.sock')], {});
      expect(viaLink.code).toBe(2);
      expect(viaLink.stderr).toContain(`pid ${first.child.pid}`);
      expect(existsSync(join(dir, 'b.sock'))).toBe(false);
    } finally {
      first.child.kill('SIGKILL');
      await first.exited;
    }
    // kill -9 released the lock: a new owner starts.
    const third = await startServe(db, join(dir, 'd.sock'), ['--quiet']);
    third.child.kill('SIGTERM');
    expect((await third.exited).code).toBe(0);
  });
});

describe('bad setups are refused before listening', () => {
  it('a read-only database file: exit 2 naming the file', async () => {
    const dir = ownedDir();
    const db = join(dir, 'host.db');
    const s = await startServe(db, join(dir, 'a.sock'), ['--quiet'], UNPRIVILEGED);
    s.child.kill('SIGTERM');
    await s.exited;
    chmodSync(db, 0o400);
    const r = await refused(['--db', db, '--socket', join(dir, 'b.sock')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/database file .*host\.db is not writable/);
    expect(existsSync(join(dir, 'b.sock'))).toBe(false);
  });

  it('an existing database in a read-only folder: exit 2 naming the folder, not "not an SQLite database"', async () => {
    const dir = ownedDir();
    const sub = join(dir, 'ro');
    mkdirSync(sub);
    if (UNPRIVILEGED.uid !== undefined) chownSync(sub, UNPRIVILEGED.uid, UNPRIVILEGED.gid!);
    const db = join(sub, 'host.db');
    const s = await startServe(db, join(dir, 'a.sock'), ['--quiet'], UNPRIVILEGED);
    s.child.kill('SIGTERM');
    await s.exited;
    chmodSync(sub, 0o500);
    const r = await refused(['--db', db, '--socket', join(dir, 'b.sock')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/folder .*ro is not writable/);
    expect(r.stderr).not.toMatch(/not an SQLite database/);
  });

  it('a socket path too long for sun_path: exit 2 naming the limit, nothing bound', async () => {
    const dir = tempDir();
    const long = join(dir, `${'s'.repeat(125 - dir.length - 1)}`);
    expect(Buffer.byteLength(long)).toBe(125);
    const r = await refused(['--db', join(dir, 'host.db'), '--socket', long], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/125 bytes, longer than the 107/);
    expect(existsSync(long.slice(0, 107))).toBe(false);
  });

  it('a --group that does not exist, or that this user cannot apply: exit 2', async () => {
    const dir = ownedDir();
    const missing = await refused(
      ['--db', join(dir, 'a.db'), '--socket', join(dir, 'a.sock'), '--group', 'no-such-group-x'],
      {},
    );
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/group "no-such-group-x" does not exist/);
    if (UNPRIVILEGED.uid !== undefined) {
      // nobody may not give files to group root.
      const denied = await refused([
        '--db',
        join(dir, 'b.db'),
        '--socket',
        join(dir, 'b.sock'),
        '--group',
        'root',
      ]);
      expect(denied.code).toBe(2);
      expect(denied.stderr).toMatch(/group/);
      expect(existsSync(join(dir, 'b.sock'))).toBe(false);
    }
  });

  it('bad flags: --drain-timeout and --max-memory', async () => {
    const dir = tempDir();
    const base = ['--db', join(dir, 'a.db'), '--socket', join(dir, 'a.sock')];
    expect((await refused([...base, '--drain-timeout', 'soon'], {})).code).toBe(2);
    expect((await refused([...base, '--max-memory', '1M'], {})).code).toBe(2);
  });
});

describe('files are private whatever the umask', () => {
  it('database, -wal, -shm and socket are 0600, or 0660 with --group', async () => {
    const old = process.umask(0);
    let plain: Awaited<ReturnType<typeof startServe>>;
    let grouped: Awaited<ReturnType<typeof startServe>>;
    const dir = tempDir();
    try {
      plain = await startServe(join(dir, 'p.db'), join(dir, 'p.sock'), ['--quiet']);
      grouped = await startServe(join(dir, 'g.db'), join(dir, 'g.sock'), [
        '--quiet',
        '--group',
        String(process.getgid?.() ?? 0),
      ]);
    } finally {
      process.umask(old);
    }
    try {
      // Write once so SQLite has created its -wal and -shm files.
      for (const name of ['p', 'g']) {
        const c = await HostServiceClient.connect(join(dir, `${name}.sock`));
        await c.registerVm(1, 16);
        await c.close();
      }
      for (const f of ['p.db', 'p.db-wal', 'p.db-shm', 'p.sock'])
        expect((statSync(join(dir, f)).mode & 0o777).toString(8), f).toBe('600');
      for (const f of ['g.db', 'g.db-wal', 'g.db-shm', 'g.sock'])
        expect((statSync(join(dir, f)).mode & 0o777).toString(8), f).toBe('660');
    } finally {
      plain.child.kill('SIGTERM');
      grouped.child.kill('SIGTERM');
      await Promise.all([plain.exited, grouped.exited]);
    }
  });
});

// A file that must not be mistaken for a database is still refused as before.
describe('not a database', () => {
  it('exits 2 for a file that is not SQLite', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'x.db'), 'hello');
    const r = await refused(['--db', join(dir, 'x.db'), '--socket', join(dir, 'x.sock')], {});
    expect(r.code).toBe(2);
  });
});
