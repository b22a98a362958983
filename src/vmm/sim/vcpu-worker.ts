/**
 * A simulated vCPU: a worker thread running one guest workload over shared
 * guest memory. It parks at clean points (between two guest operations) when
 * the VMM pauses the guest; its hypercall exits are handled on this thread
 * (ExitPort: validate, append to this vCPU's ring, return), its MSR
 * accesses exit to the VMM thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { seededRandom } from '../../common/rng.js';
import { GuestKernel } from '../../guest/guest-kernel.js';
import { layout, type WorkloadContext, type WorkloadName, workloads } from '../../guest/workloads.js';
import { type ExitRingsDescriptor, RingProducer } from './exit-rings.js';
import { GuestMemory, type GuestMemoryDescriptor } from './guest-memory.js';
import {
  bump,
  CMD,
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  PACE_MS,
  PARKED,
  SETUP_DONE,
  STAT_CONVERSIONS,
  STAT_REJECTED,
  STAT_STEPS,
  STAT_WRITES,
} from './vcpu-control.js';
import { ExitPort } from './vcpu-exit.js';

export interface VcpuWorkerData {
  vcpu: number;
  vcpus: number;
  memory: GuestMemoryDescriptor;
  slot: SharedArrayBuffer;
  rings: ExitRingsDescriptor;
  forwardsHypercalls: boolean;
  control: SharedArrayBuffer;
  workload: WorkloadName;
  seed: number;
  features: number;
  sizeHints: boolean;
  /** Page operations per millisecond per vCPU (0 = as fast as possible). */
  opsPerMs: number;
  /** Stop after this many steps (0 = run until stopped): makes a run's final state deterministic. */
  maxSteps: number;
  /** How long a step that did nothing halts (IDLE_TICK_MS unless a test says otherwise). */
  idleTickMs: number;
  counters?: SharedArrayBuffer;
  /**
   * Set on a destination: the guest resumes from migrated memory (its
   * kernel's table already there) and this vCPU's migrated step count; no
   * boot, no setup. READY is as the migrated migration-control MSR says.
   */
  resumed?: { steps: number; migrationReady: boolean };
}

const data = workerData as VcpuWorkerData;
const control = new Int32Array(data.control);
const memory = GuestMemory.attach(data.memory);
const port = new ExitPort(
  {
    slot: data.slot,
    features: data.features,
    forwardsHypercalls: data.forwardsHypercalls,
    guestPages: memory.npages,
  },
  new RingProducer(data.rings, data.vcpu),
  parentPort!,
);
const kernel = new GuestKernel(memory, port, { sizeHints: data.sizeHints });
const ctx: WorkloadContext = {
  memory,
  kernel,
  // A resumed vCPU continues a sequence derived from its migrated registers.
  rng: seededRandom(
    (data.seed * 1_000_003 + data.vcpu * 7919 + Math.imul(data.resumed?.steps ?? 0, 2654435761)) >>> 0,
  ),
  vcpu: data.vcpu,
  vcpus: data.vcpus,
  stats: {
    wrote: (n) => bump(control, data.vcpu, STAT_WRITES, n),
    converted: (n) => bump(control, data.vcpu, STAT_CONVERSIONS, n),
  },
  counters: data.counters ? new Int32Array(data.counters) : undefined,
};
const l = layout(memory.npages, data.vcpu, data.vcpus, data.workload);
const workload = workloads[data.workload];

/** A clean point: parks while paused; returns false when told to stop. */
function checkpoint(): boolean {
  for (;;) {
    const cmd = Atomics.load(control, CMD);
    if (cmd === CMD_RUN) return true;
    if (cmd === CMD_STOP) return false;
    Atomics.add(control, PARKED, 1);
    Atomics.notify(control, PARKED);
    while (Atomics.load(control, CMD) === CMD_PAUSE) Atomics.wait(control, CMD, CMD_PAUSE);
    Atomics.sub(control, PARKED, 1);
  }
}

/** Waits for vCPU 0's boot (or resume); false when told to stop first. */
function waitForVcpu0(): boolean {
  while (Atomics.load(control, SETUP_DONE) === 0) {
    if (Atomics.load(control, CMD) === CMD_STOP) return false;
    Atomics.wait(control, SETUP_DONE, 0, 5);
  }
  return true;
}

function run(): void {
  if (data.vcpu === 0) {
    if (data.resumed) {
      // The kernel wakes up in migrated memory: its table is there, READY migrated.
      kernel.resumeMigrated(data.resumed.migrationReady);
    } else {
      // Boot: the kernel writes its c-bit table into guest memory, then
      // reports every change from here on, so it may say READY.
      kernel.boot();
      kernel.enableMigration();
      if (checkpoint()) workload.setup?.(ctx, l);
    }
    Atomics.store(control, SETUP_DONE, 1);
    Atomics.notify(control, SETUP_DONE);
  } else if (waitForVcpu0()) {
    kernel.attachTable();
  }
  let budget = data.opsPerMs;
  let steps = 0;
  while (checkpoint() && (data.maxSteps === 0 || steps++ < data.maxSteps)) {
    const ops = workload.step(ctx, l, {});
    if (data.vcpu === 0) kernel.heartbeat();
    bump(control, data.vcpu, STAT_STEPS);
    budget -= ops;
    // A step that did nothing (an idle workload, or an empty partition or
    // pool) halts until the next idle tick; a paced guest that spent its
    // budget sleeps PACE_MS. Either way a pause or stop wakes it at once.
    const haltMs = ops === 0 ? data.idleTickMs : data.opsPerMs > 0 && budget <= 0 ? PACE_MS : 0;
    if (haltMs > 0) {
      Atomics.wait(control, CMD, CMD_RUN, haltMs);
      budget = data.opsPerMs;
    }
  }
  bump(control, data.vcpu, STAT_REJECTED, kernel.rejectedNotifications);
  parentPort!.postMessage({ type: 'stopped', migrationSupported: kernel.migrationSupported });
}

run();
