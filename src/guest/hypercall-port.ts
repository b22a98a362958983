/**
 * What the guest kernel helper sees of the "hardware": the hypercall
 * instruction, WRMSR and CPUID. Every transport implements this one interface,
 * so the guest code is identical whether its exits go to an in-process host
 * service, to `sevtrack serve` over a socket, or (kvm backend) through a
 * port-IO exit of a real vCPU.
 *
 * All calls are synchronous, as on a vCPU: the instruction does not retire
 * until the host has handled the exit.
 */
export interface CpuidResult {
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export interface HypercallPort {
  /** KVM_HC_* hypercall; returns the value the host put in RAX (0 or a negative KVM error). */
  hypercall(nr: number, a0: bigint, a1: bigint, a2: bigint): number;
  /** WRMSR; throws (a #GP) if the host refuses the value. */
  wrmsr(msr: number, value: bigint): void;
  rdmsr(msr: number): bigint;
  cpuid(leaf: number): CpuidResult;
}
