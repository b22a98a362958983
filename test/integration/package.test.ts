/**
 * The library as a user gets it: `npm pack` the project, install the tarball
 * into a fresh temporary project (which builds the native addon there, as a
 * user's install does), import `sevtrack` by its package name and run a small
 * in-process migration through the public API to a verified result.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';

const root = resolve(import.meta.dirname, '../..');

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, {
    cwd,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false' },
    maxBuffer: 64 * 2 ** 20,
  });
}

describe('the packed package', () => {
  it('installs into a fresh project and migrates a guest through the public API', () => {
    const dir = tempDir();
    const packDir = join(dir, 'pack');
    run('npm', ['pack', '--pack-destination', dir, '--silent'], root);
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
    expect(tarball, 'npm pack wrote no tarball').toBeDefined();

    const project = join(dir, 'consumer');
    execFileSync('mkdir', ['-p', project, packDir]);
    writeFileSync(
      join(project, 'package.json'),
      JSON.stringify({
        name: 'sevtrack-consumer',
        private: true,
        type: 'module',
        // npm 11 runs dependencies' install scripts only where allowed.
        allowScripts: { sevtrack: true, 'better-sqlite3': true },
      }),
    );
    run('npm', ['install', '--prefer-offline', '--no-package-lock', join(dir, tarball!)], project);

    writeFileSync(
      join(project, 'use.mjs'),
      `import { DEFAULT_PARAMS, migrateLocally, PROTOCOLS, KVM_HC_MAP_GPA_RANGE, SevtrackError } from 'sevtrack';
const { summary, destination } = await migrateLocally({
  ...DEFAULT_PARAMS, memoryBytes: 4 * 2 ** 20, warmupMs: 50, workload: 'churn', seed: 7,
});
console.log(JSON.stringify({
  verified: destination.verified, rounds: summary.rounds, protocols: PROTOCOLS,
  hc: KVM_HC_MAP_GPA_RANGE, errorClass: typeof SevtrackError,
}));
`,
    );
    const out = JSON.parse(run('node', ['use.mjs'], project).trim().split('\n').pop()!);
    expect(out.verified).toBe(true);
    expect(out.rounds).toBeGreaterThanOrEqual(1);
    expect(out.protocols).toContain('safe');
    expect(out.hc).toBe(12);
    expect(out.errorClass).toBe('function');
  }, 600_000);
});
