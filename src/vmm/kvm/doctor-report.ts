/**
 * What this host offers sevtrack and what sevtrack will use on it: KVM
 * present and usable (probed by running vCPUs, not assumed), its flavour
 * (KVM-PVM, VMX, SVM), the capabilities the kvm backend relies on, the SEV
 * platform where /dev/sev exists, and the resulting choices. Backs
 * `sevtrack doctor`; reading it never changes the host.
 */
import { existsSync, readFileSync } from 'node:fs';
import { nativeAddon, type SevPlatformStatus } from '../../common/native.js';
import { type KvmFlavour, kvmAvailability } from './availability.js';

export interface DoctorReport {
  kvm: {
    present: boolean;
    usable: boolean;
    reason: string;
    apiVersion: number;
    flavour: KvmFlavour;
    capabilities: Record<string, number>;
    longMode: { cpl0: { ok: boolean; detail: string }; cpl3: { ok: boolean; detail: string } };
    hypercallExit: { ok: boolean; detail: string };
  };
  sev: {
    device: boolean;
    /** kvm_amd module parameters (sev, sev_es, sev_snp) where loaded. */
    kvmAmd: Record<string, string>;
    platform: SevPlatformStatus;
  };
  guestHelper: { path: string; built: boolean };
  uses: {
    backend: 'kvm' | 'sim';
    /** Why the kvm backend is not used, when backend is sim. */
    reason: string;
    profiles: Array<'cpl0' | 'cpl3'>;
    shim:
      | 'vmcall + KVM_EXIT_HYPERCALL'
      | 'port I/O (out 0x510) + KVM_CAP_SYNC_REGS'
      | 'port I/O (out 0x510) + GET/SET_REGS'
      | null;
    dirtyLog: 'KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect)' | 'KVM_GET_DIRTY_LOG' | null;
    sevChecks: boolean;
  };
}

function kvmAmdParameters(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of ['sev', 'sev_es', 'sev_snp']) {
    const path = `/sys/module/kvm_amd/parameters/${p}`;
    if (existsSync(path)) out[p] = readFileSync(path, 'utf8').trim();
  }
  return out;
}

export function doctorReport(): DoctorReport {
  const a = kvmAvailability();
  const caps = a.probe.caps;
  const syncRegs = ((caps.KVM_CAP_SYNC_REGS ?? 0) & 1) === 1;
  const manual = ((caps.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 ?? 0) & 1) === 1;
  const platform = nativeAddon().sevPlatformStatus();
  let shim: DoctorReport['uses']['shim'] = null;
  if (a.usable) {
    if (a.shim === 'vmcall') shim = 'vmcall + KVM_EXIT_HYPERCALL';
    else shim = syncRegs ? 'port I/O (out 0x510) + KVM_CAP_SYNC_REGS' : 'port I/O (out 0x510) + GET/SET_REGS';
  }
  return {
    kvm: {
      present: existsSync('/dev/kvm'),
      usable: a.usable,
      reason: a.reason,
      apiVersion: a.probe.apiVersion,
      flavour: a.flavour,
      capabilities: caps,
      longMode: { cpl0: a.probe.cpl0, cpl3: a.probe.cpl3 },
      hypercallExit: a.probe.vmcall,
    },
    sev: { device: platform.present, kvmAmd: kvmAmdParameters(), platform },
    guestHelper: a.guestImage,
    uses: {
      backend: a.usable ? 'kvm' : 'sim',
      reason: a.reason,
      profiles: a.profiles,
      shim,
      dirtyLog: a.usable
        ? manual
          ? 'KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect)'
          : 'KVM_GET_DIRTY_LOG'
        : null,
      sevChecks: platform.ok === true,
    },
  };
}

/** The report as lines for a terminal. */
export function formatDoctorReport(r: DoctorReport): string {
  const yes = (b: boolean) => (b ? 'yes' : 'no');
  const lines = [
    `/dev/kvm present:  ${yes(r.kvm.present)}`,
    `KVM usable:        ${yes(r.kvm.usable)}${r.kvm.reason ? ` (${r.kvm.reason})` : ''}`,
  ];
  if (r.kvm.apiVersion > 0) {
    lines.push(`KVM API version:   ${r.kvm.apiVersion}`);
    lines.push(
      `KVM flavour:       ${r.kvm.flavour === 'pvm' ? 'KVM-PVM (software virtualization)' : r.kvm.flavour.toUpperCase()}`,
    );
    lines.push(
      `long mode, CPL0:   ${r.kvm.longMode.cpl0.ok ? 'ok' : 'fails'}: ${r.kvm.longMode.cpl0.detail}`,
    );
    lines.push(
      `long mode, CPL3:   ${r.kvm.longMode.cpl3.ok ? 'ok' : 'fails'}: ${r.kvm.longMode.cpl3.detail}`,
    );
    lines.push(`vmcall exit:       ${r.kvm.hypercallExit.ok ? 'ok' : 'no'}: ${r.kvm.hypercallExit.detail}`);
    lines.push('capabilities:');
    for (const [k, v] of Object.entries(r.kvm.capabilities)) lines.push(`  ${k.padEnd(36)} ${v}`);
  }
  const p = r.sev.platform;
  lines.push(`/dev/sev:          ${r.sev.device ? 'present' : 'absent'}`);
  if (r.sev.device)
    lines.push(
      `SEV platform:      ${p.ok ? `API ${p.apiMajor}.${p.apiMinor} build ${p.build}, state ${p.state}, ${p.guestCount} guests` : p.error}`,
    );
  for (const [k, v] of Object.entries(r.sev.kvmAmd)) lines.push(`kvm_amd ${k}:`.padEnd(19) + v);
  lines.push(
    `guest helper:      ${r.guestHelper.built ? r.guestHelper.path : `not built (${r.guestHelper.path})`}`,
  );
  lines.push('sevtrack will use:');
  lines.push(
    `  backend           ${r.uses.backend}${r.uses.backend === 'sim' ? ` (kvm: ${r.uses.reason})` : ''}`,
  );
  if (r.uses.backend === 'kvm') {
    lines.push(`  profiles          ${r.uses.profiles.join(', ')}`);
    lines.push(`  hypercall shim    ${r.uses.shim}`);
    lines.push(`  dirty log         ${r.uses.dirtyLog}`);
  }
  lines.push(`  SEV checks        ${r.uses.sevChecks ? 'yes' : 'no (no SEV platform)'}`);
  return `${lines.join('\n')}\n`;
}
