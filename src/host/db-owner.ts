/**
 * Taking ownership of a host database before the service opens it
 * (docs/host-protocol.md "Persistence"): refuse a setup that would fail later
 * (a file or folder that is not writable), take the one-owner lock, and
 * create the database private (0600, or 0660 for a group) whatever the
 * umask; SQLite gives the -wal and -shm files the database's mode.
 */
import {
  accessSync,
  chownSync,
  closeSync,
  constants,
  existsSync,
  fchmodSync,
  openSync,
  realpathSync,
  statSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';
import { InvalidArgumentError, MisuseError } from '../common/errors.js';
import { nativeAddon } from '../common/native.js';

/** The one-owner lock of a database; released when the process dies. */
export interface DatabaseLock {
  /** The lock file (the database's real path + "-lock"). */
  path: string;
  release(): void;
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Checks that the database at path can be written and run in WAL mode, takes
 * its exclusive lock, and creates it (mode 0600, or 0660 owned by gid) if
 * missing. Throws InvalidArgumentError naming the file or folder that is not
 * writable, or MisuseError ERR_DB_LOCKED naming the pid of the process that
 * owns the database (symlinks resolve to the same lock).
 */
export function ownDatabase(path: string, options: { gid?: number } = {}): DatabaseLock {
  const exists = existsSync(path);
  const real = exists ? realpathSync(path) : resolve(path);
  const folder = dirname(real);
  if (!existsSync(folder)) {
    throw new InvalidArgumentError(
      '--db',
      `folder ${folder} of the database does not exist; create it first`,
    );
  }
  if (exists && !statSync(real).isFile()) {
    throw new InvalidArgumentError('--db', `${real} is not a regular file; pass a database file`);
  }
  if (exists && !writable(real)) {
    throw new InvalidArgumentError(
      '--db',
      `database file ${real} is not writable by this user; fix its permissions or run as its owner`,
    );
  }
  if (!writable(folder)) {
    throw new InvalidArgumentError(
      '--db',
      `folder ${folder} is not writable by this user: SQLite needs to create the database's -wal and -shm files there; fix the folder's permissions or move the database`,
    );
  }
  const mode = options.gid === undefined ? 0o600 : 0o660;
  const lockPath = `${real}-lock`;
  const got = nativeAddon().lockFile(lockPath, mode);
  if ('holderPid' in got) {
    throw new MisuseError(
      'ERR_DB_LOCKED',
      `database ${real} is owned by another sevtrack serve (pid ${got.holderPid}); stop that process or pass another --db`,
    );
  }
  const release = () => nativeAddon().unlockFile(got.fd);
  try {
    if (options.gid !== undefined) chownSync(lockPath, process.getuid?.() ?? 0, options.gid);
    if (!exists) {
      const fd = openSync(real, 'a', mode);
      try {
        fchmodSync(fd, mode);
      } finally {
        closeSync(fd);
      }
    }
    if (options.gid !== undefined && !exists) chownSync(real, process.getuid?.() ?? 0, options.gid);
  } catch (err) {
    release();
    throw new InvalidArgumentError(
      '--group',
      `cannot prepare ${real} for group access (${(err as Error).message})`,
    );
  }
  return { path: lockPath, release };
}
