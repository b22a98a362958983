/**
 * VM exits of the simulated backend. A vCPU worker thread that executes a
 * hypercall or WRMSR posts the exit to the VMM thread and blocks on a shared
 * slot (Atomics.wait) until the VMM has handled it, as a real vCPU thread
 * sits in KVM_RUN's return path. CPUID is answered from the table the VMM gave
 * the vCPU at creation, without an exit (KVM_SET_CPUID2).
 *
 * Slot (Int32Array over 32 bytes): [0] state, [1] ret; BigInt64Array [2] the
 * value of an RDMSR.
 */
import type { MessagePort, Worker } from 'node:worker_threads';
import { RuntimeFailure } from '../../common/errors.js';
import { KVM_CPUID_FEATURES, MSR_KVM_MIGRATION_CONTROL } from '../../common/kvm-abi.js';
import type { CpuidResult, HypercallPort } from '../../guest/hypercall-port.js';
import type { HypercallBackend } from '../hypercall-backend.js';

const IDLE = 0;
const PENDING = 1;
const DONE = 2;
const FAULT = 3;

export const EXIT_SLOT_BYTES = 32;

export type ExitMessage =
  | { type: 'exit'; kind: 'hypercall'; nr: number; a0: bigint; a1: bigint; a2: bigint }
  | { type: 'exit'; kind: 'wrmsr'; msr: number; value: bigint }
  | { type: 'exit'; kind: 'rdmsr'; msr: number };

/** The vCPU side: a HypercallPort whose instructions exit to the VMM thread. */
export class ExitPort implements HypercallPort {
  private readonly state: Int32Array;
  private readonly value: BigInt64Array;

  constructor(
    slot: SharedArrayBuffer,
    private readonly port: MessagePort,
    private readonly features: number,
  ) {
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

  hypercall(nr: number, a0: bigint, a1: bigint, a2: bigint): number {
    return this.exit({ type: 'exit', kind: 'hypercall', nr, a0, a1, a2 });
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
 * The VMM side: handles the exits a vCPU worker posts, through the backend,
 * and completes each by writing the slot and waking the vCPU.
 */
export function serveExits(
  worker: Worker,
  slot: SharedArrayBuffer,
  backend: HypercallBackend,
  vm: number,
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
    let work: Promise<number>;
    if (msg.kind !== 'hypercall' && msg.msr !== MSR_KVM_MIGRATION_CONTROL) {
      complete(FAULT, 0); // an MSR this VMM does not emulate: #GP
      return;
    }
    if (msg.kind === 'hypercall') work = backend.hypercall(vm, BigInt(msg.nr), msg.a0, msg.a1, msg.a2);
    else if (msg.kind === 'wrmsr') work = backend.setMigrationControl(vm, msg.value).then(() => 0);
    else
      work = backend.getMigrationControl(vm).then((v) => {
        value[0] = v;
        return 0;
      });
    work.then(
      (ret) => complete(DONE, ret),
      (err: Error) => {
        complete(FAULT, 0);
        onError(err);
      },
    );
  });
}
