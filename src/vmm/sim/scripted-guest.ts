/**
 * A guest driven in-thread by a seeded script: at each of the migration
 * engine's interleaving points it performs a few guest operations (convert a
 * buffer, write pages, or both), obeying the guest contract (docs/design.md §3
 * rule 5) unless told to break it. Deterministic for a seed, so a scenario
 * that corrupts under an unsafe protocol variant corrupts every time.
 */

import { PAGE_SIZE } from '../../common/ranges.js';
import { type Rng, randomInt, seededRandom } from '../../common/rng.js';
import { GuestKernel } from '../../guest/guest-kernel.js';
import { KERNEL_ROOT_GFN } from '../../guest/kernel-area.js';
import type { CbitStore } from '../../host/cbit-store.js';
import type { InterleavingPoint, SourceGuest } from '../backend.js';
import { DirectPort } from '../direct-port.js';
import type { ConversionTap } from '../hypercall-backend.js';
import type { GuestMemory } from './guest-memory.js';
import { encodeVcpuState } from './vcpu-state.js';

export interface ScriptedGuestOptions {
  /** Operations per interleaving point. */
  opsPerTick?: number;
  /** Probability that a converted buffer is rewritten (the rest stay undefined). */
  rewriteProbability?: number;
  /** Pages (from the first after the kernel's area) the script converts and writes in; defaults to all. */
  workingSet?: number;
}

export class ScriptedGuest implements SourceGuest {
  generation = 0;
  readonly vcpus = 1;
  readonly kernel: GuestKernel;
  private readonly port: DirectPort;
  private readonly rng: Rng;
  private isPaused = false;
  private counter = 0;
  private readonly page = new Uint8Array(PAGE_SIZE);
  operations = 0;

  constructor(
    readonly memory: GuestMemory,
    store: CbitStore,
    vm: number,
    seed: number,
    private readonly options: ScriptedGuestOptions = {},
  ) {
    this.port = new DirectPort(store, vm);
    this.kernel = new GuestKernel(memory, this.port);
    this.kernel.boot();
    this.kernel.enableMigration();
    this.rng = seededRandom(seed);
  }

  private write(gfn: number): void {
    this.counter++;
    new Uint32Array(this.page.buffer).fill((gfn * 40503 + this.counter) >>> 0);
    this.memory.writePage(gfn, this.page);
  }

  /** One seeded guest operation. */
  step(): void {
    // Past the kernel's own area (its c-bit table), which stays private.
    const base = this.kernel.areaPages;
    const set = Math.min(this.options.workingSet ?? this.memory.npages, this.memory.npages - base);
    const gfn = base + randomInt(this.rng, set);
    const r = this.rng();
    this.operations++;
    if (r < 0.5) {
      // A conversion, with the notification returning before any write (rule 5).
      const toShared = this.memory.isEncrypted(gfn);
      if (toShared) this.kernel.setMemoryDecrypted(gfn * PAGE_SIZE, 1);
      else this.kernel.setMemoryEncrypted(gfn * PAGE_SIZE, 1);
      if (this.rng() < (this.options.rewriteProbability ?? 0.7)) this.write(gfn);
    } else {
      this.write(gfn);
    }
  }

  tick(_point: InterleavingPoint, _round: number): void {
    if (this.isPaused) return;
    for (let i = 0; i < (this.options.opsPerTick ?? 3); i++) this.step();
  }

  async pause(): Promise<void> {
    this.isPaused = true;
  }

  /** Nothing to drain: DirectPort applies and commits each change before the call returns. */
  async drainExits(): Promise<void> {}

  tapConversions(tap: ConversionTap | undefined): void {
    this.port.tap = tap;
  }

  resume(): void {
    this.isPaused = false;
  }

  get paused(): boolean {
    return this.isPaused;
  }

  vcpuState(): Uint8Array {
    return encodeVcpuState([
      {
        vcpu: 0,
        pageTableRoot: KERNEL_ROOT_GFN,
        workload: 'churn',
        seed: 0,
        steps: this.operations,
        writes: this.counter,
        conversions: this.kernel.notifications,
      },
    ]);
  }
}
