/**
 * The kvm backend's guests in the migration jobs (docs/kvm.md, "Migration"):
 * the source's VM booted with the guest helper and its exits linked into the
 * source's tracker; the destination's VM created with boot: false and its
 * own key, the pages received into its RAM; and its resume once verified:
 * the migrated vCPU state is already loaded (KvmMemory.restoreVcpuState),
 * its exits are linked into the destination's tracker, the control page's
 * `stop` word the source set for its clean pause is cleared, and the vCPUs
 * run on. The destination's heartbeat is the counter page: every vCPU's
 * `progress` must move past where it arrived.
 */
import { sleepUnlessAborted } from '../common/bounded-wait.js';
import { InvalidArgumentError, RuntimeFailure } from '../common/errors.js';
import type { WorkloadName } from '../guest/workloads.js';
import type { CbitStore } from '../host/cbit-store.js';
import { requireKvm } from '../vmm/kvm/availability.js';
import { GuestEvent, type KvmWorkload } from '../vmm/kvm/control-page.js';
import { KvmGuest, type KvmProfile } from '../vmm/kvm/kvm-guest.js';
import { KvmMemory } from '../vmm/kvm/migratable-memory.js';
import { KvmSourceGuest } from '../vmm/kvm/source-guest.js';
import { TrackerLink } from '../vmm/kvm/tracker-link.js';
import { waitForEveryVcpu } from '../vmm/kvm/wait-for.js';
import type { DestinationResult } from './destination.js';
import { DESTINATION_VM, type DestinationTracker } from './destination-tracker.js';
import {
  HEARTBEAT_WAIT_MS,
  type ResumeOptions,
  type ResumeReport,
  type RunningGuest,
} from './running-guest.js';

/**
 * The workloads the migrate command offers with --backend kvm: those the
 * guest helper runs under the same name as a sim workload.
 */
export const KVM_MIGRATE_WORKLOADS = [
  'churn',
  'swiotlb',
  'write-heavy',
] as const satisfies readonly (KvmWorkload & WorkloadName)[];
export type KvmMigrateWorkload = (typeof KVM_MIGRATE_WORKLOADS)[number];

/** The workload for the guest helper; throws naming --workload for one it does not run. */
export function kvmWorkload(name: string): KvmMigrateWorkload {
  if (!(KVM_MIGRATE_WORKLOADS as readonly string[]).includes(name))
    throw new InvalidArgumentError(
      '--workload',
      `workload "${name}" does not run in a kvm guest; with --backend kvm use ${KVM_MIGRATE_WORKLOADS.join(', ')}`,
    );
  return name as KvmMigrateWorkload;
}

/**
 * The profile migrations run in: cpl3 (native speed on KVM-PVM) where it
 * runs, else cpl0. Both sides of a migration on the same kind of host pick
 * the same; the migrated SREGS carry the guest's CPL anyway.
 */
export function kvmProfile(): KvmProfile {
  return requireKvm().profiles.includes('cpl3') ? 'cpl3' : 'cpl0';
}

export interface KvmSourceParams {
  vcpus: number;
  workload: string;
  seed: number;
  /** How long the guest runs before the migration starts. */
  warmupMs: number;
  /** The guest's load: workload operations per ms per vCPU (0 = unpaced; --guest-rate). */
  guestOpsPerMs: number;
  /** Cancels the warm-up (the run was cancelled while the guest booted). */
  signal?: AbortSignal;
}

/** A booted source VM whose exits go into `store` (vm `vm`); stop() closes it. */
export interface BootedKvmGuest {
  guest: KvmSourceGuest;
  stop(): Promise<void>;
}

/**
 * Boots a KVM guest of `npages` pages running the workload, its exits linked
 * into the store, and resolves once every vCPU booted (READY reported) and
 * the guest ran for warmupMs. A failure closes the VM.
 */
export async function bootKvmSource(
  p: KvmSourceParams,
  npages: number,
  store: CbitStore,
  vm: number,
): Promise<BootedKvmGuest> {
  const vmGuest = KvmGuest.create({
    ramPages: npages,
    vcpus: p.vcpus,
    profile: kvmProfile(),
    workload: kvmWorkload(p.workload),
    seed: BigInt(p.seed),
    opsPerMs: p.guestOpsPerMs,
  });
  const link = new TrackerLink(vmGuest, store, vm);
  const stop = async () => {
    link.close();
    vmGuest.close();
  };
  try {
    const booted = waitForEveryVcpu(vmGuest, GuestEvent.booted, 'the source guest to boot');
    vmGuest.resume();
    await booted;
    await sleepUnlessAborted(p.warmupMs, p.signal);
    return { guest: new KvmSourceGuest(vmGuest, link), stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The destination's VM for a guest the HELLO announces: no boot, its own key, vCPUs parked. */
export function allocateKvmGuest(npages: number, vcpus: number): KvmMemory {
  return new KvmMemory(
    KvmGuest.create({ ramPages: npages, vcpus, profile: kvmProfile(), workload: 'idle', boot: false }),
  );
}

function progress(guest: KvmGuest): bigint[] {
  return Array.from({ length: guest.vcpus }, (_, v) => guest.control.counters(v).progress);
}

const sum = (xs: bigint[]) => Number(xs.reduce((a, b) => a + b, 0n));

/**
 * Resumes a verified kvm destination guest; resolves once every vCPU's
 * progress counter moved past where it arrived (the guest runs its
 * workload here), with the running guest (its stop() closes the VM and the
 * tracker). Throws ERR_GUEST_STALLED, naming any vCPU failure, when it does not.
 */
export async function resumeKvmGuest(
  memory: KvmMemory,
  result: DestinationResult,
  tracker: DestinationTracker,
  o: ResumeOptions,
): Promise<{ running: RunningGuest<KvmSourceGuest>; report: ResumeReport }> {
  if (o.sysgenid)
    throw new InvalidArgumentError('--watchers', 'sysgenid watchers run in sim guests; kvm guests have none');
  const vm = memory.guest;
  const link = new TrackerLink(vm, tracker.store, DESTINATION_VM);
  const failures: string[] = [];
  const off = vm.onBatch((b) => failures.push(...b.failures));
  const guest = new KvmSourceGuest(vm, link);
  guest.generation = result.generationAfter;
  const running: RunningGuest<KvmSourceGuest> = {
    guest,
    tracker,
    vm: DESTINATION_VM,
    stop: async () => {
      off();
      link.close();
      vm.close();
      tracker.close();
    },
  };
  try {
    const atResume = progress(vm);
    guest.resume(); // lets go of the stop epoch the source's clean pause left in the control page
    const deadline = performance.now() + HEARTBEAT_WAIT_MS;
    let now = progress(vm);
    while (!now.every((p, v) => p > atResume[v])) {
      if (failures.length > 0 || performance.now() > deadline)
        throw new RuntimeFailure(
          'ERR_GUEST_STALLED',
          `the resumed kvm guest's progress counters stayed at ${atResume.join(', ')} (now ${now.join(', ')})${failures.length > 0 ? `: ${failures.join('; ')}` : ` for ${HEARTBEAT_WAIT_MS} ms: its vCPUs do not run`}`,
        );
      await new Promise((r) => setTimeout(r, 2));
      now = progress(vm);
    }
    return {
      running,
      report: {
        generation: guest.generation,
        heartbeatAtResume: sum(atResume),
        heartbeatAfter: sum(now),
        watchersAcked: 0,
        watchersTimedOut: 0,
        timeToAvailableMs: 0,
      },
    };
  } catch (err) {
    await running.stop();
    throw err;
  }
}
