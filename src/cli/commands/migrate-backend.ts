/**
 * `sevtrack migrate --backend kvm`: what the kvm backend takes of the
 * migrate flags. Its defaults differ from sim's (a small guest: 64 MiB; the
 * churn workload), its limits come from the guest helper's layout (RAM a
 * multiple of 256 KiB up to 1 GiB, which its c-bit table covers; at most
 * 16 vCPUs) and its workloads are the helper's. Flags that only make sense
 * for the simulated guest are refused when given, naming the flag (exit 2),
 * on any host; then a host without a usable /dev/kvm (the reason is the
 * probe's).
 */
import { InvalidArgumentError } from '../../common/errors.js';
import { formatBytes, parseSize } from '../../common/units.js';
import { kvmWorkload } from '../../migration/kvm-guests.js';
import type { MigrateParams } from '../../migration/run-migration.js';
import { kvmAvailability } from '../../vmm/kvm/availability.js';
import { kvmLayout } from '../../vmm/kvm/control-page.js';

export const KVM_DEFAULT_MEMORY = '64M';
export const KVM_DEFAULT_WORKLOAD = 'churn';

/** Flags (commander's attribute names and the flag) that drive the simulated guest only. */
const SIM_ONLY: ReadonlyArray<[string, string, string]> = [
  ['readCost', '--read-cost', "a kvm guest's dirty-log and c-bit reads are real ioctls, not modelled"],
  ['hops', '--hops', 'chains run sim guests'],
  ['watchers', '--watchers', 'sysgenid watchers run in sim guests'],
  ['stuckWatchers', '--stuck-watchers', 'sysgenid watchers run in sim guests'],
  ['thenConnect', '--then-connect', 'onward migrations run sim guests'],
  ['service', '--service', 'a kvm guest reports to an in-process tracker'],
  ['vm', '--vm', 'a kvm guest reports to an in-process tracker'],
];

/**
 * Turns the sim-shaped params into a kvm migration's: `given(attr)` says
 * whether the user set a flag (commander's option value source is `cli`).
 * Throws InvalidArgumentError naming the flag.
 */
export function kvmParams(
  p: MigrateParams,
  flags: { memory?: string; workload?: string },
  given: (attr: string) => boolean,
): MigrateParams {
  // A flag that cannot go with kvm is named first, on any host: the same
  // command line is refused the same way where /dev/kvm works and where not.
  for (const [attr, flag, why] of SIM_ONLY)
    if (given(attr)) throw new InvalidArgumentError(flag, `${flag} is not for --backend kvm: ${why}`);
  const a = kvmAvailability();
  if (!a.usable)
    throw new InvalidArgumentError(
      '--backend',
      `--backend kvm cannot run on this host: ${a.reason} (sevtrack doctor shows what it offers); use --backend sim`,
    );
  const layout = kvmLayout();
  const memoryBytes = parseSize(flags.memory ?? KVM_DEFAULT_MEMORY, '--memory');
  const unit = 64 * 4096;
  const min = layout.minRamPages * 4096;
  const max = layout.maxRamPages * 4096;
  if (memoryBytes % unit !== 0 || memoryBytes < min || memoryBytes > max)
    throw new InvalidArgumentError(
      '--memory',
      `--memory ${formatBytes(memoryBytes)} for --backend kvm must be a multiple of 256 KiB from ${formatBytes(min)} to ${formatBytes(max)} (the guest helper's c-bit table covers 1 GiB)`,
    );
  if (p.vcpus > layout.maxVcpus)
    throw new InvalidArgumentError(
      '--vcpus',
      `--vcpus ${p.vcpus} for --backend kvm must be at most ${layout.maxVcpus} (the guest helper's layout)`,
    );
  return {
    ...p,
    backend: 'kvm',
    memoryBytes,
    workload: kvmWorkload(flags.workload ?? KVM_DEFAULT_WORKLOAD), // throws naming --workload and the choices
    readCostNsPerPage: 0,
  };
}
