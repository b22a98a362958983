/**
 * The guest kernel's c-bit table in guest memory (src/guest/kernel-area.ts,
 * GuestKernel): the table is the source of truth, the TLB (GuestMemory.cbits)
 * follows it; they agree after every conversion, at any guest size (the
 * table spans several pages past 32,256 pages); the table is private guest
 * memory, and a table that is not there is named as such.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KVM_CPUID_FEATURES, KVM_FEATURE_HC_MAP_GPA_RANGE } from '../../src/common/kvm-abi.js';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { GuestKernel } from '../../src/guest/guest-kernel.js';
import type { HypercallPort } from '../../src/guest/hypercall-port.js';
import { KERNEL_ROOT_GFN, kernelPages, readHeartbeat } from '../../src/guest/kernel-area.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

/** A port whose host accepts every notification (isolates the kernel; not a host). */
const acceptingPort: HypercallPort = {
  hypercall: () => 0,
  wrmsr: () => {},
  rdmsr: () => 0n,
  cpuid: (leaf) => ({
    eax: leaf === KVM_CPUID_FEATURES ? 1 << KVM_FEATURE_HC_MAP_GPA_RANGE : 0,
    ebx: 0,
    ecx: 0,
    edx: 0,
  }),
};

describe('kernel area', () => {
  it('spans one page up to 32,256 pages, then one more per 32,768', () => {
    expect(kernelPages(1)).toBe(1);
    expect(kernelPages(32_256)).toBe(1);
    expect(kernelPages(32_257)).toBe(2);
    expect(kernelPages(65_536)).toBe(3);
    expect(kernelPages(2 ** 28)).toBe(8193);
  });

  it('the table in guest memory and the TLB agree after any sequence of conversions, at any size', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 70_000 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 600 }), fc.boolean()), { maxLength: 12 }),
        (npages, ops) => {
          const memory = GuestMemory.create(npages);
          const kernel = new GuestKernel(memory, acceptingPort);
          kernel.boot();
          const base = kernelPages(npages);
          for (const [at, n, encrypted] of ops) {
            if (base >= npages) break;
            const gfn = base + (at % (npages - base));
            const count = Math.min(n, npages - gfn);
            if (encrypted) kernel.setMemoryEncrypted(gfn * PAGE_SIZE, count);
            else kernel.setMemoryDecrypted(gfn * PAGE_SIZE, count);
          }
          expect(memory.readPageTables(KERNEL_ROOT_GFN).words).toEqual(memory.cbits.words);
          // The table itself stays private: the raw bytes are not the plaintext header.
          expect(memory.isEncrypted(KERNEL_ROOT_GFN)).toBe(true);
          const raw = memory.hostView(KERNEL_ROOT_GFN);
          expect(new DataView(raw.buffer, raw.byteOffset, 4).getUint32(0, true)).not.toBe(0x544b5653);
        },
      ),
      { numRuns: 25 },
    );
  });

  it('boots a guest that starts shared by making its area private first', () => {
    const memory = GuestMemory.create(64, { encrypted: false });
    const kernel = new GuestKernel(memory, acceptingPort);
    kernel.boot();
    expect(memory.isEncrypted(0)).toBe(true);
    expect(memory.isEncrypted(1)).toBe(false);
    expect(memory.readPageTables(0).words).toEqual(memory.cbits.words);
  });

  it('refuses a conversion of its own table, and changes nothing', () => {
    const memory = GuestMemory.create(64);
    const kernel = new GuestKernel(memory, acceptingPort);
    kernel.boot();
    const before = memory.cbits.words.slice();
    expect(() => kernel.setMemoryDecrypted(0, 2)).toThrow(/overlaps the kernel's c-bit table \(gfns 0-0\)/);
    expect(memory.cbits.words).toEqual(before);
    expect(memory.readPageTables(0).words).toEqual(before);
  });

  it('keeps a heartbeat in guest memory that only the guest view reads', () => {
    const memory = GuestMemory.create(16);
    const kernel = new GuestKernel(memory, acceptingPort);
    kernel.boot();
    for (let i = 0; i < 5; i++) kernel.heartbeat();
    expect(kernel.readHeartbeat()).toBe(5n);
    expect(readHeartbeat(memory.readPageLocked(0))).toBe(5n);
  });

  it('names a table that is not there: never booted, another size, or read with the wrong key', () => {
    const fresh = GuestMemory.create(16);
    expect(() => fresh.readPageTables(0)).toThrow(
      /guest c-bit table: expected magic 0x544b5653 \(SVKT\) at offset 0/,
    );
    expect(() => new GuestKernel(fresh, acceptingPort).attachTable()).toThrow(
      /guest never booted its kernel/,
    );
    const memory = GuestMemory.create(16);
    new GuestKernel(memory, acceptingPort).boot();
    expect(() => memory.readPageTables(16)).toThrow(
      /page-table root gfn 16 \(\+1 pages\) is outside guest memory/,
    );
    // The same bytes under another VM's key are garbage.
    const other = GuestMemory.create(16);
    other.bytes.set(memory.bytes);
    expect(() => other.readPageTables(0)).toThrow(/expected magic/);
  });
});
