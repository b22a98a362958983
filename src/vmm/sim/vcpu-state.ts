/**
 * The simulated vCPUs' register state, one 4 KiB page per vCPU (the VMSA
 * that SEND_UPDATE_VMSA seals): what a resumed vCPU needs to continue the
 * guest's work where the source's stopped. The page-table root plays CR3's
 * part: the destination refills the TLB from the c-bit table found there in
 * the migrated memory.
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 4 | magic `VCPU` (0x55504356) |
 * | 4 | 2 | version 1 |
 * | 6 | 2 | vCPU index |
 * | 8 | 8 | page-table root gfn (the kernel area, src/guest/kernel-area.ts) |
 * | 16 | 4 | workload (index in WORKLOADS) |
 * | 20 | 4 | workload seed |
 * | 24 | 8 | steps run |
 * | 32 | 8 | pages written |
 * | 40 | 8 | conversions |
 * | 48 | 4048 | reserved 0 |
 */
import { FormatError } from '../../common/errors.js';
import { PAGE_SIZE } from '../../common/ranges.js';
import { WORKLOADS, type WorkloadName } from '../../guest/workloads.js';

const MAGIC = 0x5550_4356; // "VCPU"
const VERSION = 1;

export interface VcpuRegisters {
  vcpu: number;
  pageTableRoot: number;
  workload: WorkloadName;
  seed: number;
  steps: number;
  writes: number;
  conversions: number;
}

/** One page per vCPU, in vCPU order. */
export function encodeVcpuState(regs: readonly VcpuRegisters[]): Uint8Array {
  const out = new Uint8Array(regs.length * PAGE_SIZE);
  for (const [i, r] of regs.entries()) {
    const v = new DataView(out.buffer, i * PAGE_SIZE, PAGE_SIZE);
    v.setUint32(0, MAGIC, true);
    v.setUint16(4, VERSION, true);
    v.setUint16(6, r.vcpu, true);
    v.setBigUint64(8, BigInt(r.pageTableRoot), true);
    v.setUint32(16, WORKLOADS.indexOf(r.workload), true);
    v.setUint32(20, r.seed >>> 0, true);
    v.setBigUint64(24, BigInt(r.steps), true);
    v.setBigUint64(32, BigInt(r.writes), true);
    v.setBigUint64(40, BigInt(r.conversions), true);
  }
  return out;
}

/** Decodes the pages of `vcpus` vCPUs; throws a FormatError naming the field and offset. */
export function decodeVcpuState(bytes: Uint8Array, vcpus: number): VcpuRegisters[] {
  if (bytes.byteLength !== vcpus * PAGE_SIZE)
    throw new FormatError(
      'vCPU state',
      0,
      `${vcpus * PAGE_SIZE} bytes (${vcpus} vCPUs)`,
      `${bytes.byteLength}`,
    );
  const out: VcpuRegisters[] = [];
  for (let i = 0; i < vcpus; i++) {
    const at = i * PAGE_SIZE;
    const v = new DataView(bytes.buffer, bytes.byteOffset + at, PAGE_SIZE);
    const magic = v.getUint32(0, true);
    if (magic !== MAGIC) throw new FormatError('vCPU state', at, 'magic VCPU', `0x${magic.toString(16)}`);
    const version = v.getUint16(4, true);
    if (version !== VERSION) throw new FormatError('vCPU state', at + 4, `version ${VERSION}`, `${version}`);
    const vcpu = v.getUint16(6, true);
    if (vcpu !== i) throw new FormatError('vCPU state', at + 6, `vCPU ${i}`, `${vcpu}`);
    const w = v.getUint32(16, true);
    if (w >= WORKLOADS.length)
      throw new FormatError('vCPU state', at + 16, `a workload index below ${WORKLOADS.length}`, `${w}`);
    out.push({
      vcpu,
      pageTableRoot: Number(v.getBigUint64(8, true)),
      workload: WORKLOADS[w],
      seed: v.getUint32(20, true),
      steps: Number(v.getBigUint64(24, true)),
      writes: Number(v.getBigUint64(32, true)),
      conversions: Number(v.getBigUint64(40, true)),
    });
  }
  return out;
}
