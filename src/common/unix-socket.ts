/**
 * Listening on a Unix socket the way every sevtrack service does: claim the
 * path (refuse a live server's socket or a non-socket, remove a stale one),
 * create the socket private (umask 0177), then make it 0600, or 0660 owned by
 * a group given by name or gid.
 */
import { chmodSync, chownSync, lstatSync, readFileSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { InvalidArgumentError, MisuseError } from './errors.js';

/** Resolves a group name (or numeric gid) through /etc/group. */
export function resolveGid(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  const line = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l) => l.split(':')[0] === group);
  if (!line)
    throw new InvalidArgumentError(
      '--group',
      `group "${group}" does not exist in /etc/group; pass an existing group name or gid`,
    );
  return Number(line.split(':')[2]);
}

/**
 * Makes path usable for a new server: refuses a path held by a live server
 * or that is not a socket, and removes a stale socket left by a dead one.
 */
export async function claimSocketPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!isSocket) {
    throw new InvalidArgumentError(
      '--socket',
      `${path} exists and is not a socket; remove it or choose another --socket path`,
    );
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) {
    throw new MisuseError(
      'ERR_SOCKET_IN_USE',
      `socket ${path} is held by a live server; stop it or choose another --socket path`,
    );
  }
  unlinkSync(path);
}

/**
 * Claims path and makes server listen on it: mode 0600, or 0660 owned by
 * `group` (a name or gid). The socket is private from the moment it exists
 * (umask); the chmod after listen is the final word.
 */
export async function listenUnixSocket(server: net.Server, path: string, group?: string): Promise<void> {
  await claimSocketPath(path);
  const gid = group === undefined ? undefined : resolveGid(group);
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
  if (gid !== undefined) {
    chownSync(path, process.getuid?.() ?? 0, gid);
    chmodSync(path, 0o660);
  } else {
    chmodSync(path, 0o600);
  }
}
