/**
 * `sevtrack sysgenid` client commands as processes against a service
 * process: JSON output, the watch hook, and the exit codes (0 ok, 1 wait
 * timed out or a hook failed, 2 bad input).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { runCli, startCli, waitForStderr } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';
import { type SysgenidServe, startSysgenidServe, waitForOutput } from './serve-process.js';

let dir: string;
let serve: SysgenidServe;
let admin: SysgenidClient;

beforeEach(async () => {
  dir = tempDir('sysgenid-cli-');
  serve = await startSysgenidServe(dir);
  admin = await SysgenidClient.connect(serve.socket);
});

afterEach(async () => {
  await admin.close();
  await serve.stop();
});

describe('sevtrack sysgenid', () => {
  it('watch prints each new generation, runs the hook with it, then acknowledges', async () => {
    const log = join(dir, 'hook.log');
    const watch = startCli([
      'sysgenid',
      'watch',
      '--socket',
      serve.socket,
      '--track',
      '--count',
      '2',
      '--json',
      '--exec',
      `echo "reseeded $SYSGENID_GENERATION" >> ${log}`,
    ]);
    await waitForStderr(watch, /watching at generation 0 \(tracked\)/);
    expect(await admin.outdated()).toBe(0);
    await admin.bump();
    await waitForOutput(watch.out, /"generation":1/);
    await admin.acknowledge(1);
    await admin.waitWatchers(0); // returns once the watch process acknowledged
    await admin.bump(7);
    expect(await watch.exit).toBe(0);
    expect(watch.out()).toBe('{"generation":1}\n{"generation":7}\n');
    expect(readFileSync(log, 'utf8')).toBe('reseeded 1\nreseeded 7\n');
  });

  it('watch does not acknowledge when the hook fails (exit 1)', async () => {
    const watch = startCli(['sysgenid', 'watch', '--socket', serve.socket, '--track', '--exec', 'exit 3']);
    await waitForStderr(watch, /watching at generation 0/);
    await admin.bump();
    expect(await watch.exit).toBe(1);
    expect(watch.err()).toMatch(/exited with 3 for generation 1; generation not acknowledged/);
  });

  it('wait exits 1 with the outdated count at the timeout, 0 once all acknowledged', async () => {
    const stuck = await SysgenidClient.connect(serve.socket);
    try {
      await stuck.setTracking(true);
      await admin.bump();
      const outdated = await runCli(['sysgenid', 'outdated', '--socket', serve.socket, '--json']);
      expect(JSON.parse(outdated.stdout)).toEqual({ outdated: 1 });
      const timedOut = await runCli([
        'sysgenid',
        'wait',
        '--socket',
        serve.socket,
        '--timeout',
        '100',
        '--json',
      ]);
      expect(timedOut.code).toBe(1);
      expect(JSON.parse(timedOut.stdout)).toEqual({ acknowledged: false, outdated: 1 });
      expect(timedOut.stderr).toMatch(/1 tracked watcher\(s\) still outdated after 100 ms/);
      await stuck.acknowledge(1);
      const ok = await runCli(['sysgenid', 'wait', '--socket', serve.socket, '--timeout', '0', '--json']);
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout)).toEqual({ acknowledged: true, outdated: 0 });
    } finally {
      await stuck.close();
    }
  });

  it('refuses bad flags with exit 2 and changes nothing', async () => {
    const neg = await runCli(['sysgenid', 'bump', '--socket', serve.socket, '--min', '-1']);
    expect(neg.code).toBe(2);
    expect(neg.stderr).toMatch(/--min "-1" must be an integer from 0 to 4294967295/);
    const missing = await runCli(['sysgenid', 'wait', '--socket', serve.socket]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--timeout/);
    expect(await admin.get()).toBe(0);
  });
});
