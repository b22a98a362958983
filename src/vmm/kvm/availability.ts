/**
 * Whether, and how, the kvm backend can run on this host, measured once per
 * process: the native probe (native/kvm/probe.h) plus what the kernel says
 * about the KVM flavour (KVM-PVM, VMX, SVM) and the guest helper binary.
 * Importing this module never touches /dev/kvm; the first call does.
 */
import { existsSync, readFileSync } from 'node:fs';
import { KvmUnavailableError } from '../../common/errors.js';
import { type KvmProbeResult, nativeAddon } from '../../common/native.js';
import { guestImagePath } from './guest-image.js';

export type KvmFlavour = 'pvm' | 'vmx' | 'svm' | 'unknown';

/** Which hypercall path the guest helper uses (chosen by the probe, never by a flag). */
export type ShimPath = 'portio' | 'vmcall';

export interface KvmAvailability {
  /** The kvm backend can run a guest here. */
  usable: boolean;
  /** Why not, when !usable. */
  reason: string;
  flavour: KvmFlavour;
  probe: KvmProbeResult;
  /** vmcall + KVM_EXIT_HYPERCALL where it works, else the port-I/O shim. */
  shim: ShimPath;
  /** Profiles whose long-mode probe passed. */
  profiles: Array<'cpl0' | 'cpl3'>;
  guestImage: { path: string; built: boolean };
}

/** KVM-PVM registers the kvm_pvm module; VMX/SVM show in the CPU flags. */
export function kvmFlavour(): KvmFlavour {
  if (existsSync('/sys/module/kvm_pvm')) return 'pvm';
  if (existsSync('/sys/module/kvm_intel')) return 'vmx';
  if (existsSync('/sys/module/kvm_amd')) return 'svm';
  try {
    const flags = readFileSync('/proc/cpuinfo', 'utf8');
    if (/\bvmx\b/.test(flags)) return 'vmx';
    if (/\bsvm\b/.test(flags)) return 'svm';
  } catch {
    // no /proc: unknown
  }
  return 'unknown';
}

let cached: KvmAvailability | undefined;

/** The probe's verdict (cached for the process). Never throws for an unusable host: `usable` says it. */
export function kvmAvailability(): KvmAvailability {
  if (cached) return cached;
  const probe = nativeAddon().kvmProbe();
  const path = guestImagePath();
  const built = existsSync(path);
  const profiles: Array<'cpl0' | 'cpl3'> = [];
  if (probe.cpl0.ok) profiles.push('cpl0');
  if (probe.cpl3.ok) profiles.push('cpl3');
  let reason = '';
  if (!probe.available) reason = probe.reason;
  else if (profiles.length === 0)
    reason = `no vCPU ran in 64-bit long mode (CPL0: ${probe.cpl0.detail}; CPL3: ${probe.cpl3.detail})`;
  else if (!built) reason = `the guest helper is not built (${path}); run \`node native/guest/build.mjs\``;
  cached = {
    usable: reason === '',
    reason,
    flavour: probe.available ? kvmFlavour() : 'unknown',
    probe,
    shim: probe.vmcall.ok ? 'vmcall' : 'portio',
    profiles,
    guestImage: { path, built },
  };
  return cached;
}

/** Throws KvmUnavailableError naming the reason unless the backend can run (with `profile`, if given). */
export function requireKvm(profile?: 'cpl0' | 'cpl3'): KvmAvailability {
  const a = kvmAvailability();
  if (!a.usable) throw new KvmUnavailableError(a.reason);
  if (profile && !a.profiles.includes(profile)) {
    const run = profile === 'cpl0' ? a.probe.cpl0 : a.probe.cpl3;
    throw new KvmUnavailableError(`the ${profile} profile does not run on this host: ${run.detail}`);
  }
  return a;
}

/** The reason the kvm backend cannot run here, or undefined when it can: for tests' skipIf. */
export function kvmSkipReason(profile?: 'cpl0' | 'cpl3'): string | undefined {
  try {
    requireKvm(profile);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}
