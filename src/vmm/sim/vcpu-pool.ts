/**
 * VcpuPool: the VMM side of a simulated guest's vCPUs. It starts one worker
 * thread per vCPU running a workload over the shared guest memory; each
 * vCPU handles its own hypercall exits into its ring (vcpu-exit.ts), the
 * pool's ExitDrainer forwards the rings to a HypercallBackend, and the pool
 * serves the slow MSR exits. It pauses, resumes and stops the vCPUs at clean
 * points (docs/design.md §3: the source pauses the guest for the final round;
 * a failure resumes it).
 */
import type { Worker } from 'node:worker_threads';
import { RuntimeFailure } from '../../common/errors.js';
import { startWorker } from '../../common/worker-script.js';
import type { WorkloadName } from '../../guest/workloads.js';
import type { HypercallBackend } from '../hypercall-backend.js';
import { ExitDrainer } from './exit-drainer.js';
import { createExitRings, DEFAULT_RING_CAPACITY, RingConsumer } from './exit-rings.js';
import type { GuestMemory } from './guest-memory.js';
import {
  bump,
  CMD,
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  controlBytes,
  IDLE_TICK_MS,
  PARKED,
  SETUP_DONE,
  STAT_CONVERSIONS,
  STAT_REJECTED,
  STAT_STEPS,
  STAT_WRITES,
  STATS_BASE,
  STATS_PER_VCPU,
} from './vcpu-control.js';
import { EXIT_SLOT_BYTES, serveExits } from './vcpu-exit.js';
import type { VcpuRegisters } from './vcpu-state.js';
import type { VcpuWorkerData } from './vcpu-worker.js';

export interface VcpuPoolOptions {
  memory: GuestMemory;
  backend: HypercallBackend;
  vm: number;
  vcpus: number;
  workload: WorkloadName;
  seed: number;
  /** Page operations per millisecond per vCPU (default 32; 0 = unpaced). */
  opsPerMs?: number;
  sizeHints?: boolean;
  /** Each vCPU stops by itself after this many steps (default: run until stop()). */
  maxSteps?: number;
  /** How long a vCPU whose step did nothing halts (default IDLE_TICK_MS; tests lengthen it). */
  idleTickMs?: number;
  /** Per-page write counters the writers keep (tests). */
  counters?: SharedArrayBuffer;
  /** Entries per vCPU exit ring (a power of two; default 4096). */
  ringCapacity?: number;
  /**
   * A destination's resumed guest: the vCPUs continue from these migrated
   * registers (one per vCPU) over migrated memory; READY as migrated.
   */
  resume?: { registers: readonly VcpuRegisters[]; migrationReady: boolean };
}

export interface GuestStats {
  writes: number;
  conversions: number;
  rejectedNotifications: number;
  steps: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class VcpuPool {
  private readonly control: Int32Array;
  private readonly workers: Worker[] = [];
  private running: number;
  private failure: Error | undefined;
  /** Resolves at the first failure (a vCPU's, or the drainer's: its backend is gone). */
  private readonly failed: Promise<void>;
  private onFailed: () => void = () => {};
  private readonly exited: Promise<void>[] = [];
  private readonly drainer: ExitDrainer;
  /** Whether vCPU 0 found the host supports the protocol (known once stopped). */
  migrationSupported: boolean | undefined;

  private constructor(readonly options: VcpuPoolOptions) {
    this.control = new Int32Array(new SharedArrayBuffer(controlBytes(options.vcpus)));
    this.running = options.vcpus;
    this.failed = new Promise((resolve) => {
      this.onFailed = resolve;
    });
    const capacity = options.ringCapacity ?? DEFAULT_RING_CAPACITY;
    if (!Number.isInteger(Math.log2(capacity)))
      throw new RuntimeFailure('ERR_RING', `ringCapacity ${capacity} must be a power of two`);
    const rings = createExitRings(options.vcpus, capacity);
    this.drainer = new ExitDrainer(new RingConsumer(rings), options.backend, options.vm, (e) => this.fail(e));
    const drain = () => this.drainer.drain();
    const resume = options.resume;
    if (resume && resume.registers.length !== options.vcpus)
      throw new RuntimeFailure(
        'ERR_VCPU',
        `${resume.registers.length} migrated vCPU states for a guest of ${options.vcpus} vCPUs`,
      );
    for (const r of resume?.registers ?? []) {
      bump(this.control, r.vcpu, STAT_STEPS, r.steps);
      bump(this.control, r.vcpu, STAT_WRITES, r.writes);
      bump(this.control, r.vcpu, STAT_CONVERSIONS, r.conversions);
    }
    for (let vcpu = 0; vcpu < options.vcpus; vcpu++) {
      const slot = new SharedArrayBuffer(EXIT_SLOT_BYTES);
      const workerData: VcpuWorkerData = {
        rings,
        forwardsHypercalls: options.backend.forwardsHypercalls,
        vcpu,
        vcpus: options.vcpus,
        memory: options.memory.descriptor(),
        slot,
        control: this.control.buffer as SharedArrayBuffer,
        workload: options.workload,
        seed: options.seed,
        features: options.backend.cpuidFeatures,
        sizeHints: options.sizeHints ?? false,
        opsPerMs: options.opsPerMs ?? 32,
        maxSteps: options.maxSteps ?? 0,
        idleTickMs: options.idleTickMs ?? IDLE_TICK_MS,
        counters: options.counters,
        resumed: resume
          ? { steps: resume.registers[vcpu].steps, migrationReady: resume.migrationReady }
          : undefined,
      };
      const worker = startWorker(import.meta.url, './vcpu-worker.js', { workerData });
      serveExits(worker, slot, options.backend, options.vm, drain, (e) => this.fail(e));
      worker.on('message', (m: { type: string; migrationSupported?: boolean }) => {
        if (m.type === 'stopped' && vcpu === 0) this.migrationSupported = m.migrationSupported;
      });
      this.exited.push(
        new Promise((resolve) => {
          worker.on('error', (e) => this.fail(e));
          worker.on('exit', () => {
            this.running--;
            resolve();
          });
        }),
      );
      this.workers.push(worker);
    }
  }

  static start(options: VcpuPoolOptions): VcpuPool {
    return new VcpuPool(options);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    this.onFailed();
  }

  private check(): void {
    if (this.failure)
      throw new RuntimeFailure('ERR_VCPU', `a vCPU failed: ${this.failure.message}`, { cause: this.failure });
  }

  /** Resolves once vCPU 0 has finished the workload's setup (boot storm, pool); rejects with the reason of `signal` once aborted. */
  async waitSetup(signal?: AbortSignal): Promise<void> {
    while (Atomics.load(this.control, SETUP_DONE) === 0) {
      signal?.throwIfAborted();
      this.check();
      if (this.running < this.options.vcpus)
        throw new RuntimeFailure('ERR_VCPU', 'a vCPU exited during setup');
      await sleep(2);
    }
  }

  /**
   * Moves every change whose hypercall has returned into the backend;
   * resolves once the backend holds them. A sync calls this first.
   */
  drainExits(): Promise<void> {
    this.check();
    return this.drainer.drain();
  }

  /** Changes drained from the rings so far. */
  get drainedChanges(): number {
    return this.drainer.drained;
  }

  /**
   * Stops every vCPU at a clean point; resolves when all are parked and
   * their rings drained. Slow exits in flight complete first (they are
   * served on this thread meanwhile).
   */
  async pause(): Promise<void> {
    Atomics.store(this.control, CMD, CMD_PAUSE);
    Atomics.notify(this.control, CMD);
    while (Atomics.load(this.control, PARKED) < this.running) {
      this.check();
      await sleep(0);
    }
    await this.drainer.drain();
  }

  resume(): void {
    Atomics.store(this.control, CMD, CMD_RUN);
    Atomics.notify(this.control, CMD);
  }

  get paused(): boolean {
    return (
      Atomics.load(this.control, CMD) === CMD_PAUSE && Atomics.load(this.control, PARKED) >= this.running
    );
  }

  /** One vCPU's counters (its registers' share of the statistics). */
  vcpuStats(vcpu: number): { writes: number; conversions: number; steps: number } {
    const at = STATS_BASE + vcpu * STATS_PER_VCPU;
    return {
      writes: Atomics.load(this.control, at + STAT_WRITES),
      conversions: Atomics.load(this.control, at + STAT_CONVERSIONS),
      steps: Atomics.load(this.control, at + STAT_STEPS),
    };
  }

  stats(): GuestStats {
    const s: GuestStats = { writes: 0, conversions: 0, rejectedNotifications: 0, steps: 0 };
    for (let v = 0; v < this.options.vcpus; v++) {
      const at = STATS_BASE + v * STATS_PER_VCPU;
      s.writes += Atomics.load(this.control, at + STAT_WRITES);
      s.conversions += Atomics.load(this.control, at + STAT_CONVERSIONS);
      s.rejectedNotifications += Atomics.load(this.control, at + STAT_REJECTED);
      s.steps += Atomics.load(this.control, at + STAT_STEPS);
    }
    return s;
  }

  /** Resolves when every vCPU has finished by itself (with maxSteps). */
  async finished(): Promise<GuestStats> {
    await Promise.all(this.exited);
    await this.drainer.stop();
    this.check();
    return this.stats();
  }

  /**
   * Stops and joins every vCPU; returns the final statistics. After a
   * failure the vCPU threads are terminated: one waiting for room in an exit
   * ring whose backend is gone (a killed host service) would wait forever.
   * `now`: terminated at once, not at a clean point, and what they
   * published is not drained (a guest abandoned while it boots: its setup
   * may run for seconds before the next clean point).
   */
  async stop(options: { now?: boolean } = {}): Promise<GuestStats> {
    Atomics.store(this.control, CMD, CMD_STOP);
    Atomics.notify(this.control, CMD);
    const all = Promise.all(this.exited);
    if (!options.now) await Promise.race([all, this.failed]);
    if (this.failure || options.now) await Promise.all(this.workers.map((w) => w.terminate()));
    await all;
    await this.drainer.stop({ abandon: options.now }).catch((e: Error) => this.fail(e));
    return this.stats();
  }
}
