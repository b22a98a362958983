/**
 * A running KVM guest as a migration source (SourceGuest, src/vmm/backend.ts).
 *
 * Clean points: KVM can stop a vCPU between any two instructions, also
 * between a conversion's c-bit table update and its hypercall, where the
 * guest's table and the host's tracker disagree. pause() therefore first
 * asks the guest helper to stop between two workload operations (the
 * control page's `stop` word: each vCPU reports STOPPED and spins), and only
 * then parks the vCPUs (KvmGuest.pause, immediate_exit): at that point every
 * conversion the guest began has returned, as the sim backend's vCPUs park
 * between guest operations. The `stop` word stays set in the migrated
 * control page; whoever runs the guest next clears it (resume() here, or the
 * destination after verification).
 *
 * drainExits() drains the exit queues into the tracker (TrackerLink);
 * tick() does nothing (nothing scripted acts at interleaving points).
 */
import type { SourceGuest } from '../backend.js';
import type { ConversionTap } from '../hypercall-backend.js';
import { GuestEvent } from './control-page.js';
import type { KvmGuest } from './kvm-guest.js';
import { KvmMemory } from './migratable-memory.js';
import type { TrackerLink } from './tracker-link.js';
import { packVcpuStates } from './vcpu-pages.js';
import { waitForEveryVcpu } from './wait-for.js';

/**
 * How long the vCPUs get to reach a clean point: an upper bound against a
 * hang, generous because a vCPU thread on an overloaded host may wait
 * seconds for a core.
 */
const STOP_TIMEOUT_MS = 30_000;

export class KvmSourceGuest implements SourceGuest {
  generation = 0;
  readonly memory: KvmMemory;

  constructor(
    readonly guest: KvmGuest,
    private readonly link: TrackerLink,
  ) {
    this.memory = new KvmMemory(guest);
  }

  get vcpus(): number {
    return this.guest.vcpus;
  }

  get paused(): boolean {
    return this.guest.paused;
  }

  /** Stops every vCPU between two workload operations, then parks it (see above). */
  async pause(): Promise<void> {
    await stopAtCleanPoint(this.guest);
  }

  resume(): void {
    this.guest.control.releaseStop();
    this.guest.resume();
  }

  tick(): void {}

  drainExits(): Promise<void> {
    this.guest.drain();
    return Promise.resolve();
  }

  tapConversions(tap: ConversionTap | undefined): void {
    this.link.tap = tap;
  }

  /** Each vCPU's saved state, packed into whole pages (vcpu-pages.ts); the guest must be paused. */
  vcpuState(): Uint8Array {
    return packVcpuStates(this.guest.saveVcpuStates());
  }
}

/**
 * Requests a stop (the control page's next odd stop epoch), waits until
 * every vCPU reported STOPPED for that epoch (it then spins between two
 * operations), and parks the vCPUs.
 */
export async function stopAtCleanPoint(guest: KvmGuest, timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
  // Only answers to this stop count: a late STOPPED of an earlier one does not.
  let epoch = -1n;
  const stopped = waitForEveryVcpu(
    guest,
    GuestEvent.stopped,
    'every vCPU to stop at a clean point',
    (arg) => arg === epoch,
    timeoutMs,
  );
  epoch = guest.control.requestStop();
  try {
    await stopped;
  } catch (err) {
    guest.control.releaseStop();
    throw err;
  }
  guest.pause();
}
