/**
 * The guest runs on (docs/design.md, "the guest runs on after resume"): a
 * verified destination starts vCPUs over the migrated memory, continuing
 * from the migrated vCPU registers, their exits going into the
 * destination's own tracker, which is from now on the VM's authoritative
 * state. Then the guest's generation is bumped through its sysgenid and the
 * overseer keeps the VM quiesced (not declared available) until every
 * tracked watcher acknowledged or the watcher timeout passed.
 *
 * Ordering: the vCPUs run before the bump (the watchers live in the guest
 * and need it running to acknowledge); the VM counts as available only
 * once the overseer returns.
 *
 * A kvm guest resumes in kvm-guests.ts (its VM already holds the migrated
 * vCPU state); the heartbeat there is its counter page's progress.
 */
import { RuntimeFailure } from '../common/errors.js';
import { KVM_MIGRATION_READY } from '../common/kvm-abi.js';
import { KERNEL_ROOT_GFN, readHeartbeat } from '../guest/kernel-area.js';
import { InProcessBackend } from '../vmm/hypercall-backend.js';
import { KvmMemory } from '../vmm/kvm/migratable-memory.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import { ThreadedGuest } from '../vmm/sim/threaded-guest.js';
import { VcpuPool } from '../vmm/sim/vcpu-pool.js';
import { decodeVcpuState } from '../vmm/sim/vcpu-state.js';
import type { DestinationResult } from './destination.js';
import { DESTINATION_VM, type DestinationTracker } from './destination-tracker.js';
import { resumeKvmGuest } from './kvm-guests.js';
import {
  HEARTBEAT_WAIT_MS,
  type ResumeOptions,
  type ResumeReport,
  type RunningGuest,
} from './running-guest.js';

export {
  HEARTBEAT_WAIT_MS,
  type ResumeOptions,
  type ResumeReport,
  type RunningGuest,
} from './running-guest.js';

/** The heartbeat counter the guest keeps in its memory, read through the SEV model. */
export function guestHeartbeat(guest: ThreadedGuest): number {
  return Number(readHeartbeat(guest.memory.readPageLocked(KERNEL_ROOT_GFN)));
}

/**
 * Resumes a verified destination guest (`result` with its memory and
 * registers; its tracker has applied the final state). Resolves once the
 * vCPUs run, the heartbeat moved and the VM was declared available.
 */
export async function resumeGuest(
  result: DestinationResult,
  tracker: DestinationTracker,
  o: ResumeOptions,
): Promise<{ running: RunningGuest; report: ResumeReport }> {
  if (!result.memory || !result.vcpuState)
    throw new RuntimeFailure('ERR_NOT_RESUMED', 'only a verified destination guest can resume');
  if (result.memory instanceof KvmMemory) return resumeKvmGuest(result.memory, result, tracker, o);
  if (!(result.memory instanceof GuestMemory))
    throw new RuntimeFailure('ERR_NOT_RESUMED', `no way to resume a ${result.memory.backend} guest`);
  const registers = decodeVcpuState(result.vcpuState, result.hello.vcpus);
  const pool = VcpuPool.start({
    memory: result.memory,
    backend: new InProcessBackend(tracker.store),
    vm: DESTINATION_VM,
    vcpus: registers.length,
    workload: registers[0].workload,
    seed: registers[0].seed,
    opsPerMs: o.guestOpsPerMs,
    resume: { registers, migrationReady: (result.migrationControl & KVM_MIGRATION_READY) !== 0n },
  });
  const guest = new ThreadedGuest(result.memory, pool);
  guest.generation = result.generationAfter;
  const running: RunningGuest = {
    guest,
    tracker,
    vm: DESTINATION_VM,
    stop: async () => {
      await pool.stop();
      tracker.close();
    },
  };
  try {
    const heartbeatAtResume = guestHeartbeat(guest);
    await pool.waitSetup();
    let watchers = { watchersAcked: 0, watchersTimedOut: 0, timeToAvailableMs: 0 };
    if (o.sysgenid) {
      const r = await o.sysgenid.resume({
        watcherTimeoutMs: o.watcherTimeoutMs,
        min: result.generationAfter,
      });
      guest.generation = r.generation;
      watchers = r;
    }
    const heartbeatAfter = await heartbeatPast(guest, heartbeatAtResume);
    return {
      running,
      report: {
        generation: guest.generation,
        heartbeatAtResume,
        heartbeatAfter,
        watchersAcked: watchers.watchersAcked,
        watchersTimedOut: watchers.watchersTimedOut,
        timeToAvailableMs: watchers.timeToAvailableMs,
      },
    };
  } catch (err) {
    await running.stop();
    throw err;
  }
}

/** Resolves with the heartbeat once it is past `from` (the guest runs); throws if it stalls. */
async function heartbeatPast(guest: ThreadedGuest, from: number): Promise<number> {
  const deadline = performance.now() + HEARTBEAT_WAIT_MS;
  for (;;) {
    const now = guestHeartbeat(guest);
    if (now > from) return now;
    if (performance.now() > deadline)
      throw new RuntimeFailure(
        'ERR_GUEST_STALLED',
        `the resumed guest's heartbeat stayed at ${from} for ${HEARTBEAT_WAIT_MS} ms: its vCPUs do not run`,
      );
    await new Promise((r) => setTimeout(r, 2));
  }
}
