/** The kvm vCPU states packed into whole VMSA pages (src/vmm/kvm/vcpu-pages.ts): round trip and refusals. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../../src/common/errors.js';
import { packVcpuStates, unpackVcpuStates } from '../../../src/vmm/kvm/vcpu-pages.js';

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('did not throw');
}

describe('kvm vCPU state pages', () => {
  it('any states round-trip through the same whole number of pages per vCPU', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 9000 }), { minLength: 1, maxLength: 5 }),
        (states) => {
          const packed = packVcpuStates(states);
          const largest = Math.max(...states.map((s) => s.length));
          expect(packed.length).toBe(states.length * Math.ceil((largest + 8) / 4096) * 4096);
          const back = unpackVcpuStates(packed, states.length);
          expect(back.map((b) => Buffer.from(b).toString('hex'))).toEqual(
            states.map((s) => Buffer.from(s).toString('hex')),
          );
        },
      ),
      { numRuns: 50 },
    );
  });

  it('a saved KVM state (about 5.8 KiB) takes two pages', () => {
    expect(packVcpuStates([new Uint8Array(5836), new Uint8Array(5836)]).length).toBe(4 * 4096);
  });

  it('refuses a count of pages that is not whole per vCPU, a bad length or a vCPU out of place, naming the offset', () => {
    const packed = packVcpuStates([new Uint8Array(100).fill(1), new Uint8Array(200).fill(2)]);
    const cases: [Uint8Array, number, number, RegExp][] = [
      [packed, 3, 0, /a whole number of pages per vCPU for 3 vCPUs/],
      [packed.subarray(0, 4000), 1, 0, /4000 bytes/],
    ];
    const zeroLength = packed.slice();
    new DataView(zeroLength.buffer).setUint32(4096, 0, true);
    cases.push([zeroLength, 2, 4096, /a length in \[1, 4088\].*got 0/]);
    const tooLong = packed.slice();
    new DataView(tooLong.buffer).setUint32(0, 5000, true);
    cases.push([tooLong, 2, 0, /got 5000/]);
    const swapped = packed.slice();
    new DataView(swapped.buffer).setUint32(4096 + 4, 0, true);
    cases.push([swapped, 2, 4100, /expected vCPU 1.*got 0/]);
    for (const [bytes, vcpus, offset, message] of cases) {
      const e = thrown(() => unpackVcpuStates(bytes, vcpus)) as FormatError;
      expect(e).toBeInstanceOf(FormatError);
      expect(e.offset).toBe(offset);
      expect(e.message).toMatch(message);
    }
  });
});
