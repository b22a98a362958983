/**
 * KvmGuest: a real VM on /dev/kvm running the guest helper, as the host VMM
 * sees it. vCPU threads and exits live in native code (native/kvm); what
 * reaches TypeScript is batches of records, drained when the addon signals
 * that a queue went non-empty (one callback per batch, never one per guest
 * write or per exit).
 *
 * Signalled drains are paced: the next one starts no sooner than
 * DRAIN_INTERVAL_MS, or as long as the last drain took, after the last one
 * ended. Each drain ends in one durable commit of the tracker (an fsync);
 * drained on every signal, an unpaced guest's conversions kept the VMM thread
 * in fsync most of the time (14 of 16.6 s in a profile of four 8 MiB
 * migrations), and on a slower disk starved the migration outright. Explicit
 * drain() calls (a sync, a pause, a wait that polls) are never delayed.
 *
 * Ordering rules:
 * - A hypercall's record is queued before the guest's call returns (the
 *   native exit handler writes RAX after the push): a sync that drains first
 *   sees every change the guest was told is done (docs/design.md §5).
 * - Within a batch each vCPU's records are in the order it made them.
 * - pause() returns with every vCPU at a clean point and every record
 *   produced before it delivered to the listeners.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError, KvmError } from '../../common/errors.js';
import { type KvmVmNative, nativeAddon } from '../../common/native.js';
import type { PageBitmap } from '../../common/page-bitmap.js';
import { PAGE_SIZE } from '../../common/ranges.js';
import { requireKvm, type ShimPath } from './availability.js';
import { ControlPage, type KvmWorkload, kvmLayout } from './control-page.js';
import { guestImage } from './guest-image.js';
import { nativeCall } from './native-call.js';

export type KvmProfile = 'cpl0' | 'cpl3';

export interface KvmGuestOptions {
  /** RAM in 4 KiB pages: a multiple of 64, at most 262144 (1 GiB). */
  ramPages: number;
  vcpus: number;
  profile: KvmProfile;
  workload: KvmWorkload;
  seed?: bigint;
  /** stride workload: every stride-th page per pass. */
  stride?: number;
  /**
   * The guest's load: workload operations per ms per vCPU (default 0:
   * unpaced, as fast as the vCPU runs). Written into the control page, so
   * it travels with the guest; each vCPU thread holds its vCPU to it.
   */
  opsPerMs?: number;
  /** 16 bytes; a fresh random key by default (each VM its own, as on SEV). */
  key?: Uint8Array;
  /** KVM_CLEAR_DIRTY_LOG with manual protect where offered (default true). */
  manualProtect?: boolean;
  /** A vCPU with neither exits nor progress for this long fails (default 10 s). */
  stallMs?: number;
  /**
   * false: do not load the helper or write the control page (a migration
   * destination whose memory and vCPU state arrive from the source).
   */
  boot?: boolean;
}

/** One MAP_GPA_RANGE (or other) hypercall as the vCPU made it, with the value it got back. */
export interface ShimCall {
  vcpu: number;
  seq: number;
  nr: bigint;
  a0: bigint;
  a1: bigint;
  a2: bigint;
  ret: number;
}

export interface GuestEventRecord {
  vcpu: number;
  seq: number;
  event: number;
  arg: bigint;
}

export interface RecordBatch {
  /** The raw records (8 u64 each: kind, vcpu, seq, nr, a0, a1, a2, ret), for zero-copy consumers. */
  raw: BigUint64Array;
  calls: ShimCall[];
  events: GuestEventRecord[];
  /** One line per vCPU that failed (a guest crash, a stall, a failed ioctl). */
  failures: string[];
}

export type BatchListener = (batch: RecordBatch) => void;

/** The least time between two signalled drains (as the sim backend's exit drainer). */
export const DRAIN_INTERVAL_MS = 2;

const KIND_HYPERCALL = 0n;
const KIND_EVENT = 1n;

function toSigned(v: bigint): number {
  return Number(BigInt.asIntN(64, v));
}

export class KvmGuest {
  readonly ramPages: number;
  readonly vcpus: number;
  readonly profile: KvmProfile;
  readonly key: Uint8Array;
  /** Guest RAM as the host sees it (raw bytes). */
  readonly ram: Uint8Array;
  readonly control: ControlPage;
  readonly manualProtect: boolean;
  /**
   * How the guest's hypercalls reach the host: `vmcall` (KVM_EXIT_HYPERCALL;
   * KVM itself answers the calls it can refuse, such as an unaligned gpa, so
   * those never reach the host) or `portio` (every call reaches the host).
   */
  readonly shim: ShimPath;
  private readonly vm: KvmVmNative;
  private readonly listeners = new Set<BatchListener>();
  private closed = false;
  private running = false;
  /** When a signalled drain may run next (performance.now()), and the timer waiting for it. */
  private nextDrainAt = 0;
  private drainTimer: NodeJS.Timeout | undefined;

  private constructor(options: KvmGuestOptions) {
    // Bad input is named whatever the host offers; then the host is asked.
    const layout = kvmLayout();
    const { ramPages, vcpus } = options;
    if (
      !Number.isInteger(ramPages) ||
      ramPages % 64 !== 0 ||
      ramPages < layout.minRamPages ||
      ramPages > layout.maxRamPages
    )
      throw new InvalidArgumentError(
        'ramPages',
        `ramPages ${ramPages} must be a multiple of 64 in [${layout.minRamPages}, ${layout.maxRamPages}] (the guest helper's c-bit table covers 1 GiB)`,
      );
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > layout.maxVcpus)
      throw new InvalidArgumentError('vcpus', `vcpus ${vcpus} must be an integer in [1, ${layout.maxVcpus}]`);
    const opsPerMs = options.opsPerMs ?? 0;
    if (!Number.isInteger(opsPerMs) || opsPerMs < 0 || opsPerMs > 1_000_000)
      throw new InvalidArgumentError(
        'opsPerMs',
        `opsPerMs ${opsPerMs} must be an integer in [0, 1000000] (0 = unpaced)`,
      );
    const a = requireKvm(options.profile);
    const key = options.key ?? new Uint8Array(randomBytes(16));
    if (key.length !== 16) throw new InvalidArgumentError('key', `key must be 16 bytes, got ${key.length}`);
    this.ramPages = ramPages;
    this.vcpus = vcpus;
    this.profile = options.profile;
    this.key = key;
    // KVM answers hypercalls from ring 3 with -EPERM: vmcall only at CPL0.
    const vmcall = a.shim === 'vmcall' && options.profile === 'cpl0';
    this.shim = vmcall ? 'vmcall' : 'portio';
    this.vm = nativeCall(
      () =>
        new (nativeAddon().KvmVm)({
          ramPages,
          vcpus,
          cpl: options.profile === 'cpl0' ? 0 : 3,
          manualProtect: options.manualProtect ?? true,
          vmcall,
          key,
          stallMs: options.stallMs ?? 10_000,
          onRecords: () => this.signalled(),
        }),
      'options',
    );
    this.manualProtect = this.vm.info().manualProtect;
    const buffer = this.vm.ram();
    this.ram = new Uint8Array(buffer);
    this.control = new ControlPage(buffer);
    if (options.boot ?? true) {
      const image = guestImage();
      this.ram.set(image, layout.codeGpa);
      this.control.writeBoot({
        vcpus,
        ramPages,
        workload: options.workload,
        vmcall,
        seed: options.seed ?? 1n,
        stride: options.stride ?? 1,
        opsPerMs,
      });
    }
  }

  /** Creates the VM (vCPUs parked). Throws KvmUnavailableError naming the reason where KVM cannot run it. */
  static create(options: KvmGuestOptions): KvmGuest {
    return new KvmGuest(options);
  }

  /** Adds a listener for record batches; returns a function that removes it. */
  onBatch(listener: BatchListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get paused(): boolean {
    return !this.running;
  }

  /** Starts or resumes every vCPU. */
  resume(): void {
    this.checkOpen();
    nativeCall(() => this.vm.resume());
    this.running = true;
  }

  /**
   * Parks every vCPU at a clean point (its pending exit completed), then
   * delivers every record made before the pause. Throws KvmError when a vCPU
   * does not park within timeoutMs.
   */
  pause(timeoutMs = 5000): void {
    this.checkOpen();
    nativeCall(() => this.vm.pause(timeoutMs));
    this.running = false;
    this.drain();
  }

  /** The addon's signal: drains now, or once the pacing interval has passed (one timer at most). */
  private signalled(): void {
    if (this.drainTimer !== undefined || this.closed) return;
    const wait = this.nextDrainAt - performance.now();
    if (wait <= 0) {
      this.drain();
      return;
    }
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      // libuv's timers run on a millisecond-grain clock cached per loop turn,
      // so one may fire early (by more than a millisecond after a long turn):
      // wait out the rest rather than drain early.
      this.signalled();
    }, wait);
    // The running VM's notifier keeps the process up, not this timer.
    this.drainTimer.unref();
  }

  /** Takes every queued record now and hands the batch to the listeners; returns it. */
  drain(): RecordBatch {
    if (this.closed) return { raw: new BigUint64Array(0), calls: [], events: [], failures: [] };
    const start = performance.now();
    try {
      return this.drainNow();
    } finally {
      const end = performance.now();
      this.nextDrainAt = end + Math.max(DRAIN_INTERVAL_MS, end - start);
    }
  }

  private drainNow(): RecordBatch {
    const { records, messages } = this.vm.drain();
    const batch: RecordBatch = { raw: records, calls: [], events: [], failures: messages };
    for (let i = 0; i < records.length; i += 8) {
      const kind = records[i];
      const vcpu = Number(records[i + 1]);
      const seq = Number(records[i + 2]);
      if (kind === KIND_HYPERCALL) {
        batch.calls.push({
          vcpu,
          seq,
          nr: records[i + 3],
          a0: records[i + 4],
          a1: records[i + 5],
          a2: records[i + 6],
          ret: toSigned(records[i + 7]),
        });
      } else if (kind === KIND_EVENT) {
        batch.events.push({ vcpu, seq, event: Number(records[i + 4]), arg: records[i + 5] });
      }
    }
    if (records.length > 0) for (const l of this.listeners) l(batch);
    return batch;
  }

  /**
   * ORs the pages dirtied since the last harvest into `out` and clears them
   * in KVM; returns their number. Copy pages only after this returns: a
   * write racing with the harvest is then in the copy or in the next harvest.
   */
  harvestDirty(out: PageBitmap): number {
    this.checkOpen();
    if (out.npages !== this.ramPages)
      throw new InvalidArgumentError('out', `bitmap of ${out.npages} pages for a guest of ${this.ramPages}`);
    return nativeCall(() => this.vm.harvestDirty(out.words), 'out');
  }

  /** Each vCPU's serialized state (REGS, SREGS, XSAVE, XCRS, DEBUGREGS, VCPU_EVENTS, MSRs); the guest must be paused. */
  saveVcpuStates(): Uint8Array[] {
    this.checkOpen();
    return Array.from({ length: this.vcpus }, (_, i) => nativeCall(() => this.vm.saveVcpuState(i), 'vcpu'));
  }

  /** Loads states saved by saveVcpuStates (of a guest with as many vCPUs); the guest must be paused. */
  loadVcpuStates(states: readonly Uint8Array[]): void {
    this.checkOpen();
    if (states.length !== this.vcpus)
      throw new InvalidArgumentError(
        'states',
        `${states.length} vCPU states for a guest of ${this.vcpus} vCPUs`,
      );
    for (const [i, s] of states.entries()) nativeCall(() => this.vm.loadVcpuState(i, s), 'state');
  }

  /** The guest's own c-bit table (1 = encrypted), read from guest memory: it travels with the pages. */
  guestCbit(gfn: number): boolean {
    const byte = this.ram[kvmLayout().cbitTableGpa + (gfn >>> 3)];
    return ((byte >>> (gfn & 7)) & 1) === 1;
  }

  /** The guest's view of page gfn: raw bytes, decrypted with the VM's key where the guest's c-bit is set. */
  guestView(gfn: number): Uint8Array {
    const page = this.ram.slice(gfn * PAGE_SIZE, (gfn + 1) * PAGE_SIZE);
    if (this.guestCbit(gfn)) nativeAddon().kvmKeystreamXor(this.key, page, gfn * PAGE_SIZE);
    return page;
  }

  status() {
    this.checkOpen();
    return this.vm.status();
  }

  /** Stops the vCPU threads and releases the VM. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.drain();
    clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
    this.closed = true;
    this.running = false;
    this.vm.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new KvmError('the VM is closed');
  }
}
