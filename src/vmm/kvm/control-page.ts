/**
 * Typed access to the guest helper's control page (native/guest/abi.h,
 * struct svt_control) in a KVM guest's RAM: the host writes the parameters
 * before boot and the iteration/stop words while it runs; each vCPU writes
 * only its own counters. Offsets come from the addon (kvmLayout), never
 * restated here.
 */
import { type KvmLayout, nativeAddon } from '../../common/native.js';

export const KVM_WORKLOADS = [
  'idle',
  'churn',
  'swiotlb',
  'write-heavy',
  'iterate',
  'shim-seq',
  'stride',
] as const;
/** The guest helper's workloads, numbered as SVT_WL_* in abi.h. */
export type KvmWorkload = (typeof KVM_WORKLOADS)[number];

/** Guest events (SVT_EVENT_* in abi.h). */
export const GuestEvent = {
  booted: 1,
  passDone: 2,
  stopped: 3,
  noTracking: 4,
  ready: 5,
  badWorkload: 6,
} as const;

/** A vCPU's counters, read from guest memory. */
export interface VcpuCounters {
  progress: bigint;
  writes: bigint;
  conversions: bigint;
  rejected: bigint;
  lastRet: bigint;
  pass: bigint;
}

export interface BootParameters {
  vcpus: number;
  ramPages: number;
  workload: KvmWorkload;
  vmcall: boolean;
  seed: bigint;
  stride: number;
  /** Workload operations per ms per vCPU (0 = unpaced). */
  opsPerMs: number;
}

let layoutCache: KvmLayout | undefined;

export function kvmLayout(): KvmLayout {
  layoutCache ??= nativeAddon().kvmLayout();
  return layoutCache;
}

export class ControlPage {
  private readonly view: DataView;
  private readonly l = kvmLayout();

  constructor(ram: ArrayBuffer) {
    this.view = new DataView(ram, this.l.controlGpa, 4096);
  }

  /** Writes the boot parameters; the guest reads them when a vCPU first enters. */
  writeBoot(p: BootParameters): void {
    const v = this.view;
    v.setBigUint64(0, BigInt(this.l.magic), true);
    v.setUint32(this.l.offVersion, this.l.version, true);
    v.setUint32(this.l.offVcpus, p.vcpus, true);
    v.setBigUint64(this.l.offRamPages, BigInt(p.ramPages), true);
    v.setUint32(this.l.offWorkload, KVM_WORKLOADS.indexOf(p.workload), true);
    v.setUint32(this.l.offShimMode, p.vmcall ? 1 : 0, true);
    v.setBigUint64(this.l.offSeed, p.seed, true);
    v.setBigUint64(this.l.offStride, BigInt(p.stride), true);
    v.setBigUint64(this.l.offOpsPerMs, BigInt(p.opsPerMs), true);
  }

  get iteration(): bigint {
    return this.view.getBigUint64(this.l.offIteration, true);
  }

  /** The guest reads it on every operation (stride: a new pass per value; iterate: stamped into writes). */
  set iteration(value: bigint) {
    this.view.setBigUint64(this.l.offIteration, value, true);
  }

  /** The stop epoch (abi.h): odd while a stop is requested. */
  get stopWord(): bigint {
    return this.view.getBigUint64(this.l.offStop, true);
  }

  /**
   * Asks every vCPU to stop: writes the next odd epoch (over an odd word
   * too, so vCPUs already spinning on it report again) and returns it; each
   * vCPU answers with a STOPPED event carrying it and spins.
   */
  requestStop(): bigint {
    const word = this.stopWord;
    const epoch = word + ((word & 1n) === 1n ? 2n : 1n);
    this.view.setBigUint64(this.l.offStop, epoch, true);
    return epoch;
  }

  /** Lets spinning vCPUs go on (the next even epoch); nothing when no stop is requested. */
  releaseStop(): void {
    const word = this.stopWord;
    if ((word & 1n) === 1n) this.view.setBigUint64(this.l.offStop, word + 1n, true);
  }

  /** The guest's pace: workload operations per ms per vCPU (0 = unpaced). */
  get opsPerMs(): number {
    return Number(this.view.getBigUint64(this.l.offOpsPerMs, true));
  }

  get cpuidFeatures(): number {
    return Number(this.view.getBigUint64(this.l.offCpuidFeatures, true));
  }

  counters(vcpu: number): VcpuCounters {
    const base = this.l.offVcpu + vcpu * this.l.vcpuCountersSize;
    const g = (off: number) => this.view.getBigUint64(base + off, true);
    return {
      progress: g(this.l.offProgress),
      writes: g(this.l.offWrites),
      conversions: g(this.l.offConversions),
      rejected: g(this.l.offRejected),
      lastRet: g(this.l.offLastRet),
      pass: g(this.l.offPass),
    };
  }
}
