/** A unix socket file nobody listens on, as a server killed with SIGKILL leaves behind. */
import { spawnSync } from 'node:child_process';

/** Creates a stale socket at path: a child process listens there and is killed with SIGKILL. */
export function leaveStaleSocket(path: string): void {
  spawnSync(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
}
