/**
 * The shared control block between the VMM thread and its vCPU workers:
 * run/pause/stop commands, the parked count (pause completes when every
 * vCPU is parked at a clean point, between two guest operations), the setup
 * flag, and per-vCPU statistics.
 */
export const CMD = 0;
export const PARKED = 1;
export const SETUP_DONE = 2;
export const STATS_BASE = 8;
export const STATS_PER_VCPU = 4;

export const CMD_RUN = 0;
export const CMD_PAUSE = 1;
export const CMD_STOP = 2;

/**
 * How long a vCPU with nothing to do halts before its next step: a guest
 * kernel's idle tick at HZ=100. A halted vCPU costs its host nothing until
 * then (a pause or stop wakes it at once). It used to look again every
 * millisecond: on a 2-core machine each wake cost the process about 40 µs
 * of CPU, and over a 1 GiB migration's bulk round the threads other than
 * source and destination (an idle guest's two vCPUs among them) used about
 * 30 ms more CPU (80 ms more for an all-encrypted guest), on the cores the
 * source and destination threads need.
 */
export const IDLE_TICK_MS = 10;

/** How long a paced guest that spent its operations budget sleeps (VcpuPoolOptions.opsPerMs is per ms). */
export const PACE_MS = 1;

/** Per-vCPU statistics fields (offsets inside a vCPU's block). */
export const STAT_WRITES = 0;
export const STAT_CONVERSIONS = 1;
export const STAT_REJECTED = 2;
export const STAT_STEPS = 3;

export function controlBytes(vcpus: number): number {
  return (STATS_BASE + vcpus * STATS_PER_VCPU) * 4;
}

/** Adds to a vCPU's statistic. */
export function bump(control: Int32Array, vcpu: number, stat: number, n = 1): void {
  Atomics.add(control, STATS_BASE + vcpu * STATS_PER_VCPU + stat, n);
}
