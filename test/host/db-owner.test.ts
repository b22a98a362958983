import { spawn } from 'node:child_process';
import { mkdirSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, MisuseError } from '../../src/common/errors.js';
import { ownDatabase } from '../../src/host/db-owner.js';
import { ROOT } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

/** A second process that takes the lock through the addon and holds it until killed. */
async function holder(lockPath: string) {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const a = require(${JSON.stringify(join(ROOT, 'build/Release/sevtrack_native.node'))});
       const r = a.lockFile(${JSON.stringify(lockPath)}, 0o600);
       process.stdout.write('fd' in r ? 'locked\\n' : 'busy\\n');
       setInterval(() => {}, 1000);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  return child;
}

describe('ownDatabase', () => {
  it('creates the database 0600 whatever the umask, and takes its lock', () => {
    const dir = tempDir();
    const old = process.umask(0);
    try {
      const lock = ownDatabase(join(dir, 'a.db'));
      expect(statSync(join(dir, 'a.db')).mode & 0o777).toBe(0o600);
      expect(statSync(lock.path).mode & 0o777).toBe(0o600);
      lock.release();
    } finally {
      process.umask(old);
    }
  });

  it('refuses a database another process owns, naming its pid, also through a symlink', async () => {
    const dir = tempDir();
    const db = join(dir, 'b.db');
    ownDatabase(db).release();
    const child = await holder(`${db}-lock`);
    try {
      expect(() => ownDatabase(db)).toThrow(
        new RegExp(`owned by another sevtrack serve \\(pid ${child.pid}\\)`),
      );
      symlinkSync(db, join(dir, 'link.db'));
      expect(() => ownDatabase(join(dir, 'link.db'))).toThrow(MisuseError);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    ownDatabase(db).release(); // the lock died with its holder
  });

  it('refuses a missing folder and a path that is not a file', () => {
    const dir = tempDir();
    expect(() => ownDatabase(join(dir, 'nope', 'c.db'))).toThrow(/folder .* does not exist/);
    mkdirSync(join(dir, 'adir'));
    expect(() => ownDatabase(join(dir, 'adir'))).toThrow(InvalidArgumentError);
  });
});
