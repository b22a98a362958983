/**
 * Peak RSS of `sevtrack migrate` (source and destination in one process, as
 * the CLI runs them by default) per byte of guest memory, measured in a child
 * process. The limit is what the process must hold: both guests' memory plus
 * the RSS of the same CLI doing nothing (`--version`), measured in this run.
 * At 1 GiB and 4 GiB (the target: within 2 guests + 256 MiB at 4 GiB; the
 * page frames in flight are bounded by the channels' credits and the page
 * sender's frame pools).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { BenchGroup } from '../harness.js';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const REPORTER = fileURLToPath(new URL('../support/peak-rss.js', import.meta.url));

/** Runs `node bin/sevtrack.js ...args` with the peak-RSS reporter; resolves its peak RSS in bytes. */
function peakRss(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', REPORTER, 'bin/sevtrack.js', ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      const m = /sevtrack-peak-rss-kib (\d+)/.exec(stderr);
      if (code !== 0 || !m)
        reject(new Error(`sevtrack ${args.join(' ')} exited ${code}: ${stderr.slice(-500)}`));
      else resolve(Number(m[1]) * 1024);
    });
  });
}

export const memoryGroup: BenchGroup = {
  name: 'memory',
  description: 'peak RSS of `sevtrack migrate` (one process) per byte of guest',
  async run(report) {
    const idle = await peakRss(['--version']);
    for (const [label, bytes] of [
      ['1G', 2 ** 30],
      ['4G', 4 * 2 ** 30],
    ] as const) {
      const peak = await peakRss(['migrate', '--memory', label, '--json']);
      report({
        name: `peak RSS / guest size, migrate --memory ${label} (lower is better)`,
        value: peak / bytes,
        unit: 'x guest',
        limit: (2 * bytes + idle) / bytes,
        limitName: `2 guests + idle CLI RSS ${(idle / 2 ** 20).toFixed(0)} MiB`,
      });
    }
  },
};
