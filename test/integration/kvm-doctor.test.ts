/**
 * `sevtrack doctor` as a user runs it: on this host, and on a host whose
 * /dev/kvm is not a KVM (a private mount namespace binds /dev/null over it,
 * which needs root), where doctor says why and the kvm backend refuses with
 * KvmUnavailableError naming the same reason.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { kvmSkipReason } from '../../src/vmm/kvm/availability.js';
import type { DoctorReport } from '../../src/vmm/kvm/doctor-report.js';
import { CLI_MAIN, ROOT, runCli } from '../support/cli.js';

const isRoot = process.getuid?.() === 0;
const hasUnshare = spawnSync('unshare', ['--version']).status === 0;
const hideKvm =
  !isRoot || !hasUnshare || !existsSync('/dev/kvm')
    ? 'needs root, unshare and a /dev/kvm to hide'
    : undefined;

/** Runs node with args in a mount namespace where /dev/kvm is /dev/null. */
function withoutKvm(nodeArgs: string[]) {
  const quoted = nodeArgs.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
  return spawnSync(
    'unshare',
    ['-m', 'sh', '-c', `mount --bind /dev/null /dev/kvm && exec '${process.execPath}' ${quoted}`],
    {
      cwd: ROOT,
      encoding: 'utf8',
    },
  );
}

describe('sevtrack doctor', () => {
  it('reports this host and what sevtrack will use (--json)', async () => {
    const r = await runCli(['doctor', '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as DoctorReport;
    expect(report.kvm.present).toBe(existsSync('/dev/kvm'));
    expect(report.sev.device).toBe(existsSync('/dev/sev'));
    const skip = kvmSkipReason();
    expect(report.kvm.usable).toBe(skip === undefined);
    expect(report.uses.backend).toBe(skip === undefined ? 'kvm' : 'sim');
    if (report.kvm.usable) {
      expect(report.kvm.apiVersion).toBe(12);
      expect(['pvm', 'vmx', 'svm', 'unknown']).toContain(report.kvm.flavour);
      expect(report.kvm.capabilities.KVM_CAP_USER_MEMORY).toBe(1);
      expect(report.uses.profiles.length).toBeGreaterThan(0);
      // The shim follows the probe: vmcall only where it reached userspace.
      expect(report.uses.shim?.startsWith('vmcall')).toBe(report.kvm.hypercallExit.ok);
    }
  });

  it('prints a readable report', async () => {
    const r = await runCli(['doctor']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\/dev\/kvm present: {2}(yes|no)$/m);
    expect(r.stdout).toMatch(/sevtrack will use:\n {2}backend {11}(kvm|sim)/);
  });

  it.skipIf(hideKvm)(
    'on a host whose /dev/kvm is not KVM: says why, and the backend refuses with the same reason',
    () => {
      const doctor = withoutKvm(['--import', 'tsx', CLI_MAIN, 'doctor', '--json']);
      expect(doctor.status).toBe(0);
      const report = JSON.parse(doctor.stdout) as DoctorReport;
      expect(report.kvm.usable).toBe(false);
      expect(report.uses.backend).toBe('sim');
      expect(report.kvm.reason).toMatch(/KVM_GET_API_VERSION/);
      const create = withoutKvm([
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `const { KvmGuest } = await import('./src/vmm/kvm/kvm-guest.ts');
       try { KvmGuest.create({ ramPages: 256, vcpus: 1, profile: 'cpl3', workload: 'idle' }); }
       catch (e) { console.log(JSON.stringify({ name: e.constructor.name, code: e.code, message: e.message })); }`,
      ]);
      const err = JSON.parse(create.stdout) as { name: string; code: string; message: string };
      expect(err.name).toBe('KvmUnavailableError');
      expect(err.code).toBe('ERR_KVM_UNAVAILABLE');
      expect(err.message).toContain(report.kvm.reason);
    },
  );
});
