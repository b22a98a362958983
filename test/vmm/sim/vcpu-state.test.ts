import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../../src/common/ranges.js';
import { decodeVcpuState, encodeVcpuState, type VcpuRegisters } from '../../../src/vmm/sim/vcpu-state.js';

const regs: VcpuRegisters[] = [
  { vcpu: 0, pageTableRoot: 0, workload: 'mixed', seed: 7, steps: 2 ** 40, writes: 5, conversions: 3 },
  { vcpu: 1, pageTableRoot: 0, workload: 'mixed', seed: 7, steps: 9, writes: 0, conversions: 0 },
];

describe('vCPU state (the VMSA pages)', () => {
  it('round-trips one page per vCPU', () => {
    const bytes = encodeVcpuState(regs);
    expect(bytes.byteLength).toBe(2 * PAGE_SIZE);
    expect(decodeVcpuState(bytes, 2)).toEqual(regs);
  });

  it('names what is wrong and where: size, magic, version, vCPU order, workload', () => {
    const bytes = encodeVcpuState(regs);
    expect(() => decodeVcpuState(bytes, 3)).toThrow(/expected 12288 bytes \(3 vCPUs\) at offset 0, got 8192/);
    const bad = (at: number, value: number, width: 2 | 4) => {
      const b = bytes.slice();
      const v = new DataView(b.buffer);
      if (width === 2) v.setUint16(at, value, true);
      else v.setUint32(at, value, true);
      return () => decodeVcpuState(b, 2);
    };
    expect(bad(PAGE_SIZE, 0, 4)).toThrow(/magic VCPU at offset 4096/);
    expect(bad(4, 2, 2)).toThrow(/version 1 at offset 4, got 2/);
    expect(bad(PAGE_SIZE + 6, 0, 2)).toThrow(/vCPU 1 at offset 4102, got 0/);
    expect(bad(16, 99, 4)).toThrow(/a workload index below 6 at offset 16, got 99/);
  });
});
