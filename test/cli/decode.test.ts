import { describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';

describe('sevtrack decode', () => {
  it('prints the decoded change and exits 0', async () => {
    const r = await runCli(['decode', '--a0', '0x200000', '--a1', '512', '--a2', '0x11', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ ret: 0, gfn: 512, npages: 512, encrypted: true, pageSizeCode: 1 });
  });

  it('exits 1 with the KVM return code for an invalid hypercall', async () => {
    const r = await runCli(['decode', '--a0', '0x1003', '--a1', '1', '--a2', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ret -22: gpa 0x1003 is not 4 KiB aligned/);
  });

  it('exits 2 naming the flag for bad flags', async () => {
    const bad = await runCli(['decode', '--a0', 'zz', '--a1', '1', '--a2', '0']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--a0 "zz" is not an unsigned integer/);
    const missing = await runCli(['decode']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--a0/);
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(2);
  });

  it('--help lists the commands', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/decode/);
  });
});
