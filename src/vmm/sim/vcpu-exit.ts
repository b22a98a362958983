/**
 * VM exits of the simulated backend, handled as a real VMM does (QEMU runs
 * each vCPU's exits on that vCPU's thread):
 *
 * - MAP_GPA_RANGE hypercalls are handled on the vCPU's own thread: the call
 *   is validated (decodeHypercall, the exact KVM return codes), the change
 *   appended to this vCPU's ring (exit-rings.ts) and the call returns. The
 *   change is in host memory before the guest's call returns; the tracker
 *   drains the rings.
 * - MSR accesses (migration control) stay a slow exit: the vCPU posts the
 *   exit to the VMM thread and blocks on a shared slot (Atomics.wait) until
 *   the VMM has handled it, as a real vCPU thread sits in KVM_RUN's return
 *   path. The VMM drains the rings first, so an MSR write orders after every
 *   change the vCPU reported before it.
 * - CPUID is answered from the table the VMM gave the vCPU at creation,
 *   without an exit (KVM_SET_CPUID2).
 *
 * Slot (Int32Array over 32 bytes): [0] state, [1] ret; BigInt64Array [2] the
 * value of an RDMSR.
 */
import type { MessagePort, Worker } from 'node:worker_threads';
import { RuntimeFailure } from '../../common/errors.js';
import {
  decodeHypercall,
  KVM_CPUID_FEATURES,
  KVM_ENOSYS,
  MSR_KVM_MIGRATION_CONTROL,
} from '../../common/kvm-abi.js';
import type { CpuidResult, HypercallPort } from '../../guest/hypercall-port.js';
import type { HypercallBackend } from '../hypercall-backend.js';
import type { RingProducer } from './exit-rings.js';

const IDLE = 0;
const PENDING = 1;
const DONE = 2;
const FAULT = 3;

export const EXIT_SLOT_BYTES = 32;

export type ExitMessage =
  | { type: 'exit'; kind: 'wrmsr'; msr: number; value: bigint }
  | { type: 'exit'; kind: 'rdmsr'; msr: number };

/** How the VMM set up a vCPU's exits. */
export interface VcpuExitConfig {
  slot: SharedArrayBuffer;
  features: number;
  /** Whether the host handles MAP_GPA_RANGE (KVM_CAP_EXIT_HYPERCALL); if not, -KVM_ENOSYS. */
  forwardsHypercalls: boolean;
  /** Guest pages (the range check of decodeHypercall). */
  guestPages: number;
}

/** The vCPU side: hypercalls handled on this thread through its ring, MSR accesses exiting to the VMM thread. */
export class ExitPort implements HypercallPort {
  private readonly state: Int32Array;
  private readonly value: BigInt64Array;
  private readonly features: number;

  constructor(
    private readonly config: VcpuExitConfig,
    private readonly ring: RingProducer,
    private readonly port: MessagePort,
  ) {
    const slot = config.slot;
    this.features = config.features;
    this.state = new Int32Array(slot, 0, 2);
    this.value = new BigInt64Array(slot, 16, 1);
  }

  private exit(msg: ExitMessage): number {
    Atomics.store(this.state, 0, PENDING);
    this.port.postMessage(msg);
    while (Atomics.load(this.state, 0) === PENDING) Atomics.wait(this.state, 0, PENDING);
    const state = Atomics.load(this.state, 0);
    const ret = this.state[1];
    Atomics.store(this.state, 0, IDLE);
    if (state === FAULT) throw new RuntimeFailure('ERR_GP', `#GP: the host refused ${msg.kind}`);
    return ret;
  }

  /**
   * The hypercall exit, on this vCPU's thread: validate, append to the ring,
   * return. A rejected call changes nothing and returns KVM's error code.
   */
  hypercall(nr: number, a0: bigint, a1: bigint, a2: bigint): number {
    if (!this.config.forwardsHypercalls) return -KVM_ENOSYS;
    const d = decodeHypercall(nr, a0, a1, a2, this.config.guestPages);
    if (!d.ok) return d.ret;
    // Rule: the change is in host memory (the ring) before the call returns.
    this.ring.push(d.change.gfn, d.change.npages, d.change.encrypted);
    return 0;
  }

  wrmsr(msr: number, value: bigint): void {
    this.exit({ type: 'exit', kind: 'wrmsr', msr, value });
  }

  rdmsr(msr: number): bigint {
    this.exit({ type: 'exit', kind: 'rdmsr', msr });
    return this.value[0];
  }

  cpuid(leaf: number): CpuidResult {
    return { eax: leaf === KVM_CPUID_FEATURES ? this.features : 0, ebx: 0, ecx: 0, edx: 0 };
  }
}

/**
 * The VMM side of the slow exits (MSR accesses): handles those a vCPU
 * worker posts, through the backend, after draining the rings (`drain`),
 * and completes each by writing the slot and waking the vCPU.
 */
export function serveExits(
  worker: Worker,
  slot: SharedArrayBuffer,
  backend: HypercallBackend,
  vm: number,
  drain: () => Promise<void>,
  onError: (e: Error) => void,
): void {
  const state = new Int32Array(slot, 0, 2);
  const value = new BigInt64Array(slot, 16, 1);
  const complete = (s: number, ret: number) => {
    state[1] = ret;
    Atomics.store(state, 0, s);
    Atomics.notify(state, 0);
  };
  worker.on('message', (msg: ExitMessage) => {
    if (msg?.type !== 'exit') return;
    if (msg.msr !== MSR_KVM_MIGRATION_CONTROL) {
      complete(FAULT, 0); // an MSR this VMM does not emulate: #GP
      return;
    }
    // The MSR access orders after every change reported before it.
    const work =
      msg.kind === 'wrmsr'
        ? drain().then(() => backend.setMigrationControl(vm, msg.value).then(() => 0))
        : drain().then(() =>
            backend.getMigrationControl(vm).then((v) => {
              value[0] = v;
              return 0;
            }),
          );
    work.then(
      (ret) => complete(DONE, ret),
      (err: Error) => {
        complete(FAULT, 0);
        onError(err);
      },
    );
  });
}
