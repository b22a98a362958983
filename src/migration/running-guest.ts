/**
 * A guest resumed on a destination, whichever backend runs it, and what
 * resuming it showed (destination-resume.ts for sim, kvm-guests.ts for kvm).
 */
import type { GuestSysgenid } from '../sysgenid/guest-sysgenid.js';
import type { SourceGuest } from '../vmm/backend.js';
import type { DestinationTracker } from './destination-tracker.js';

/** How long a resumed guest gets to show its heartbeat moving. */
export const HEARTBEAT_WAIT_MS = 10_000;

/** A guest running on this side, its tracker holding its state. */
export interface RunningGuest<G extends SourceGuest = SourceGuest> {
  guest: G;
  tracker: DestinationTracker;
  vm: number;
  /** Stops the vCPUs and closes the tracker (a temporary database is removed). */
  stop(): Promise<void>;
}

/** What resuming showed: the guest runs, its generation, its watchers. */
export interface ResumeReport {
  generation: number;
  /**
   * The heartbeat counter in guest memory as it arrived, and once it had
   * moved on (kvm: the counter page's progress, summed over the vCPUs, once
   * every vCPU advanced).
   */
  heartbeatAtResume: number;
  heartbeatAfter: number;
  watchersAcked: number;
  watchersTimedOut: number;
  /** From the bump until the VM was declared available (0 without watchers). */
  timeToAvailableMs: number;
}

export interface ResumeOptions {
  guestOpsPerMs: number;
  /** The guest's sysgenid (its service and watchers); without it the generation is the verdict's. */
  sysgenid?: GuestSysgenid;
  watcherTimeoutMs: number;
}
