/**
 * A KVM guest's saved vCPU states (kvm-guest.ts saveVcpuStates: REGS, SREGS,
 * XSAVE, ... about 5.8 KiB each) as the whole pages the migration stream's
 * VMSA step carries (docs/migration-stream.md): every vCPU gets the same
 * number of pages, P = the fewest that hold the largest state, laid out as
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 4 | length of the saved state in bytes (u32 LE) |
 * | 4 | 4 | vCPU index (u32 LE) |
 * | 8 | length | the saved state (docs/kvm.md, "vCPU state") |
 * | 8 + length | … | zero up to P pages |
 */
import { FormatError } from '../../common/errors.js';
import { PAGE_SIZE } from '../../common/ranges.js';

const HEADER = 8;

/** Packs one saved state per vCPU (vCPU order) into vcpus * P pages. */
export function packVcpuStates(states: readonly Uint8Array[]): Uint8Array {
  const largest = Math.max(0, ...states.map((s) => s.byteLength));
  const per = Math.max(1, Math.ceil((HEADER + largest) / PAGE_SIZE)) * PAGE_SIZE;
  const out = new Uint8Array(states.length * per);
  const view = new DataView(out.buffer);
  for (const [v, s] of states.entries()) {
    view.setUint32(v * per, s.byteLength, true);
    view.setUint32(v * per + 4, v, true);
    out.set(s, v * per + HEADER);
  }
  return out;
}

/** The saved states of `vcpus` vCPUs packed by packVcpuStates; throws a FormatError naming the offset. */
export function unpackVcpuStates(bytes: Uint8Array, vcpus: number): Uint8Array[] {
  const pages = bytes.byteLength / PAGE_SIZE;
  if (vcpus < 1 || !Number.isInteger(pages) || pages === 0 || pages % vcpus !== 0)
    throw new FormatError(
      'vCPU state',
      0,
      `a whole number of pages per vCPU for ${vcpus} vCPUs`,
      `${bytes.byteLength} bytes`,
    );
  const per = (pages / vcpus) * PAGE_SIZE;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Uint8Array[] = [];
  for (let v = 0; v < vcpus; v++) {
    const at = v * per;
    const length = view.getUint32(at, true);
    if (length === 0 || length > per - HEADER)
      throw new FormatError('vCPU state', at, `a length in [1, ${per - HEADER}]`, `${length}`);
    const index = view.getUint32(at + 4, true);
    if (index !== v) throw new FormatError('vCPU state', at + 4, `vCPU ${v}`, `${index}`);
    out.push(bytes.slice(at + HEADER, at + HEADER + length));
  }
  return out;
}
