/**
 * Guest memory is advised for transparent huge pages (native/memory_advice.cc):
 * the 2 MiB-aligned interior of the buffer gets MADV_HUGEPAGE, which the
 * kernel records on the mapping (the `hg` flag in /proc/self/smaps); and
 * made resident before use (prefaultMemory, GuestMemory.makeResident),
 * contents unchanged.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/common/native.js';
import { prepareGuestMemory } from '../../src/migration/run-destination.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { rssAnon } from '../support/resident.js';

const MIB = 2 ** 20;
/** Keeps every buffer of this file alive, so no mapping is freed between two readings of smaps. */
const keep: unknown[] = [];

/** Bytes of this process's mappings carrying the MADV_HUGEPAGE flag (adjacent ones may be merged). */
function hugeAdvisedBytes(): number {
  let total = 0;
  let size = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^Size:\s+(\d+) kB/.exec(line);
    if (m) size = Number(m[1]) * 1024;
    if (line.startsWith('VmFlags:') && line.split(/\s+/).includes('hg')) total += size;
  }
  return total;
}

describe('adviseHugePages', () => {
  it('advises the whole 2 MiB-aligned interior of a buffer, as the kernel records it', () => {
    const bytes = new Uint8Array(new SharedArrayBuffer(16 * MIB));
    keep.push(bytes);
    const before = hugeAdvisedBytes();
    const r = nativeAddon().adviseHugePages(bytes);
    expect(['always', 'madvise', 'never', 'unavailable']).toContain(r.mode);
    if (r.mode === 'never' || r.mode === 'unavailable') {
      expect(r.advisedBytes).toBe(0);
      return;
    }
    expect(r.advisedBytes % (2 * MIB)).toBe(0);
    // At most one partial huge page is lost at each end.
    expect(r.advisedBytes).toBeGreaterThanOrEqual(12 * MIB);
    expect(r.advisedBytes).toBeLessThanOrEqual(16 * MIB);
    expect(hugeAdvisedBytes() - before).toBe(r.advisedBytes);
    bytes.fill(7); // still ordinary memory
    expect(bytes[16 * MIB - 1]).toBe(7);
  });

  it('advises nothing in a buffer smaller than a huge page', () => {
    const r = nativeAddon().adviseHugePages(new Uint8Array(new SharedArrayBuffer(64 * 1024)));
    expect(r.advisedBytes).toBe(0);
  });

  it('refuses what is not a Uint8Array, naming the argument', () => {
    const addon = nativeAddon() as unknown as { adviseHugePages(x: unknown): unknown };
    expect(() => addon.adviseHugePages(new Uint32Array(4))).toThrow(/memory must be a Uint8Array/);
    expect(() => addon.adviseHugePages(undefined)).toThrow(/memory must be a Uint8Array/);
  });

  it('is applied to a sim guest created with hugePages, and only then', () => {
    const plain = hugeAdvisedBytes();
    keep.push(GuestMemory.create(4096)); // 16 MiB
    expect(hugeAdvisedBytes()).toBe(plain);
    const before = hugeAdvisedBytes();
    keep.push(GuestMemory.create(4096, { hugePages: true }));
    const mode = nativeAddon().adviseHugePages(new Uint8Array(0)).mode;
    const advised = hugeAdvisedBytes() - before;
    if (mode === 'always' || mode === 'madvise') expect(advised).toBeGreaterThanOrEqual(12 * MIB);
    else expect(advised).toBe(0);
  });

  it('is applied to a prepared destination guest', async () => {
    const before = hugeAdvisedBytes();
    keep.push(await prepareGuestMemory(4096)); // 16 MiB
    const mode = nativeAddon().adviseHugePages(new Uint8Array(0)).mode;
    const advised = hugeAdvisedBytes() - before;
    if (mode === 'always' || mode === 'madvise') expect(advised).toBeGreaterThanOrEqual(12 * MIB);
    else expect(advised).toBe(0);
  });

  it('prefaultMemory maps every page in, contents unchanged', () => {
    const bytes = new Uint8Array(new SharedArrayBuffer(64 * MIB));
    keep.push(bytes);
    bytes[12345] = 42;
    const before = rssAnon();
    const r = nativeAddon().prefaultMemory(bytes);
    // Touched from user space whether or not the kernel could populate.
    expect(r.touchedBytes).toBeGreaterThanOrEqual(64 * MIB);
    expect(rssAnon() - before).toBeGreaterThan(60 * MIB);
    expect(bytes[12345]).toBe(42);
    expect(bytes.every((b, i) => b === (i === 12345 ? 42 : 0))).toBe(true);
    if (r.error !== null) {
      // A kernel before 5.14: said plainly, nothing populated.
      expect(r.error).toMatch(/MADV_POPULATE_WRITE/);
      expect(r.populatedBytes).toBe(0);
      return;
    }
    expect(r.populatedBytes).toBeGreaterThan(64 * MIB - 8192);
  });

  it('prefaultMemory of a slice changes no byte inside it or beside it, on the pages it shares', () => {
    const bytes = new Uint8Array(new SharedArrayBuffer(64 * 1024));
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
    const copy = bytes.slice();
    // From mid-page to mid-page: the first and last pages are shared with the bytes beside it.
    // 28 622 bytes from wherever the buffer's data starts: 7 or 8 pages, rounded outward.
    const r = nativeAddon().prefaultMemory(bytes.subarray(4096 + 100, 8 * 4096 + 50));
    expect([7 * 4096, 8 * 4096]).toContain(r.touchedBytes);
    expect(bytes).toEqual(copy);
  });
});

describe('GuestMemory.makeResident (guest RAM resident before use)', () => {
  it('changes no byte of a guest, across the boundaries of its steps (its residency: prepare-memory.test.ts)', async () => {
    const memory = GuestMemory.create(6144, { hugePages: true }); // 24 MiB: three steps of 8 MiB
    keep.push(memory);
    const marks = [0, 1, 8 * MIB - 1, 8 * MIB, 8 * MIB + 4096, 16 * MIB - 2, 24 * MIB - 1];
    for (const [i, at] of marks.entries()) memory.bytes[at] = i + 1;
    await memory.makeResident();
    for (const [i, at] of marks.entries()) expect(memory.bytes[at]).toBe(i + 1);
    let nonzero = 0;
    for (const b of memory.bytes) if (b !== 0) nonzero++;
    expect(nonzero).toBe(marks.length);
  });
});

describe('releaseMemory / GuestMemory.release (a guest that moved on)', () => {
  it('gives a resident guest back to the kernel at once: RSS falls, its pages read as zero', async () => {
    const memory = GuestMemory.create(16_384, { hugePages: true }); // 64 MiB
    keep.push(memory);
    await memory.makeResident();
    memory.bytes.fill(5);
    const before = rssAnon();
    memory.release();
    expect(before - rssAnon()).toBeGreaterThan(56 * MIB);
    let nonzero = 0;
    for (const b of memory.bytes) if (b !== 0) nonzero++;
    // Only the bytes sharing a page with what lies beside the buffer keep their value.
    expect(nonzero).toBeLessThan(2 * 4096);
  });

  it('releases only the pages wholly inside a slice: the bytes beside it keep their values', () => {
    const bytes = new Uint8Array(new SharedArrayBuffer(64 * 1024)).fill(9);
    const r = nativeAddon().releaseMemory(bytes.subarray(4096 + 100, 8 * 4096 + 50));
    expect([5 * 4096, 6 * 4096]).toContain(r.releasedBytes);
    expect(bytes.subarray(0, 4096 + 100).every((b) => b === 9)).toBe(true);
    expect(bytes.subarray(8 * 4096 + 50).every((b) => b === 9)).toBe(true);
    expect(bytes.subarray(2 * 4096 + 100, 7 * 4096).every((b) => b === 0)).toBe(true);
  });
});
