/**
 * Listening on a Unix socket the way every sevtrack service does: claim the
 * path (refuse a live server's socket, a non-socket or a path too long to
 * bind, remove a stale one),
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

/** The longest unix socket path Linux binds (sun_path is 108 bytes with its NUL); longer ones are cut silently. */
export const MAX_UNIX_PATH_BYTES = 107;

/**
 * Makes `path` usable for a new server (`serve`'s host service, the sysgenid
 * service, a `migrate --listen` destination). Resolves when nothing is there
 * or after removing a socket nobody listens on (a stale one from a dead
 * server). Throws MisuseError `ERR_SOCKET_IN_USE` when a live server accepts
 * on it (that server is left alone), and InvalidArgumentError naming `flag`
 * when the path is too long or holds something that is not a socket.
 * Another server may still claim the path between this check and the
 * caller's listen(): the caller's listen error covers that race.
 */
export async function claimSocketPath(path: string, flag = '--socket'): Promise<void> {
  if (Buffer.byteLength(path) > MAX_UNIX_PATH_BYTES) {
    throw new InvalidArgumentError(
      flag,
      `${flag} ${path} is ${Buffer.byteLength(path)} bytes long; a unix socket path has at most ${MAX_UNIX_PATH_BYTES}: choose a shorter path`,
    );
  }
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    // Nothing there, or no directory to hold it: listen() reports which (a typed error).
    if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) return;
    throw err;
  }
  if (!isSocket) {
    throw new InvalidArgumentError(
      flag,
      `${path} exists and is not a socket; remove it or choose another ${flag} path`,
    );
  }
  const probe = await probeSocket(path);
  if (probe === 'live') {
    throw new MisuseError(
      'ERR_SOCKET_IN_USE',
      `socket ${path} is held by a live server; stop it or choose another ${flag} path`,
    );
  }
  if (probe !== 'stale') {
    throw new MisuseError(
      'ERR_SOCKET_IN_USE',
      `socket ${path} exists and cannot be probed (connecting gave ${probe}), so it may be in use; remove it if it is stale or choose another ${flag} path`,
    );
  }
  unlinkSync(path);
}

/**
 * Probes the unix socket at `path` with one connection: `live` when a server
 * accepts (or its backlog is full), `stale` when nobody listens (ECONNREFUSED)
 * or the file is gone, else the errno of the failed connect (e.g. EACCES).
 */
export function probeSocket(path: string): Promise<'live' | 'stale' | string> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve('live');
    });
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EAGAIN') resolve('live');
      else if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') resolve('stale');
      else resolve(err.code ?? err.message);
    });
  });
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
