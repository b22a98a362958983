/** `sevtrack migrate --service` refuses bad flags and a service that is not there: exit 2 or 3, one clear line, nothing started. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { leaveStaleSocket } from '../support/stale-socket.js';
import { tempDir } from '../support/tmp.js';

describe('sevtrack migrate --service flags', () => {
  it('refuses bad flags and a service that is not there, with a clear message', async () => {
    const dir = tempDir();
    const stale = join(dir, 'stale.sock');
    leaveStaleSocket(stale);
    const cases: [string[], number, RegExp][] = [
      [['--service', stale], 2, /--service needs --vm ID/],
      [['--vm', '3'], 2, /--vm names a VM of the host service: pass --service SOCKET too/],
      [['--service', stale, '--vm', 'x'], 2, /--vm/],
      [['--service', join(dir, 'none.sock'), '--vm', '1'], 2, /no socket there \(ENOENT\)/],
      [['--service', stale, '--vm', '1'], 3, /the host service does not answer .*ECONNREFUSED/],
      [
        ['--service', stale, '--vm', '1', '--role', 'destination', '--listen', join(dir, 'd.sock')],
        2,
        /--service is the source guest's tracker/,
      ],
    ];
    for (const [flags, code, message] of cases) {
      const r = await runCli(['migrate', '--memory', '1M', ...flags]);
      expect({ flags, code: r.code }).toEqual({ flags, code });
      expect(r.stderr).toMatch(message);
      expect(r.stdout).toBe('');
    }
  });
});
