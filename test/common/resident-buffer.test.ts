/**
 * Resident working buffers (src/common/resident-buffer.ts): zeroed shared
 * memory starting on a 2 MiB boundary, resident once returned (so writing
 * it takes no first-touch faults), and a bad size refused by name.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/common/errors.js';
import { nativeAddon } from '../../src/common/native.js';
import { HUGE_PAGE_BYTES, residentBuffer } from '../../src/common/resident-buffer.js';
import { rssAnon } from '../support/resident.js';

const MIB = 2 ** 20;

/** This thread's minor faults so far (field 10 of /proc/thread-self/stat). */
function minorFaults(): number {
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
}

describe('residentBuffer', () => {
  it('is zeroed shared memory of the size asked, on a huge-page boundary', () => {
    const b = residentBuffer(5 * MIB + 123);
    expect(b.byteLength).toBe(5 * MIB + 123);
    expect(b.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(nativeAddon().hugePageOffset(b)).toBe(0);
    expect(b.every((x) => x === 0)).toBe(true);
    // The offset of a view one byte further on is the rest of the huge page.
    expect(nativeAddon().hugePageOffset(b.subarray(1))).toBe(HUGE_PAGE_BYTES - 1);
  });

  it('is resident once returned: writing all of it takes almost no faults', () => {
    const before = rssAnon();
    const b = residentBuffer(16 * MIB);
    expect(rssAnon() - before).toBeGreaterThanOrEqual(16 * MIB);
    const faults = minorFaults();
    for (let o = 0; o < b.byteLength; o += 4096) b[o] = 1;
    // 4,096 pages written; a fresh buffer faults on each (a few stray faults
    // of the test's own allocations are allowed).
    expect(minorFaults() - faults).toBeLessThan(64);
  });

  it('refuses a size that is not a whole number of bytes, naming it', () => {
    for (const bad of [-1, 1.5, Number.NaN]) {
      expect(() => residentBuffer(bad)).toThrow(InvalidArgumentError);
      expect(() => residentBuffer(bad)).toThrow(
        expect.objectContaining({
          field: 'bytes',
          message: expect.stringMatching(/must be a whole number of bytes, got/),
        }),
      );
    }
  });
});
