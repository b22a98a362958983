import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../../src/vmm/sim/guest-memory.js';

describe('the SEV memory model', () => {
  it('an encrypted page reads back as written while the host sees different bytes', () => {
    const mem = GuestMemory.create(64);
    const data = new Uint8Array(randomBytes(4096));
    mem.writePage(5, data);
    expect(Buffer.from(mem.readPage(5)).equals(Buffer.from(data))).toBe(true);
    expect(Buffer.from(mem.hostView(5)).equals(Buffer.from(data))).toBe(false);
    // Reading with the wrong c-bit yields different bytes.
    expect(Buffer.from(mem.readPageAs(5, false)).equals(Buffer.from(data))).toBe(false);
    expect(mem.dirty.test(5)).toBe(true);
    expect(mem.written.test(5)).toBe(true);
  });

  it('a shared page is stored as plaintext; the same data encrypts differently at two GPAs', () => {
    const mem = GuestMemory.create(64);
    const data = new Uint8Array(4096).fill(0xab);
    mem.setCbits(1, 1, false);
    mem.writePage(1, data);
    expect(Buffer.from(mem.hostView(1)).equals(Buffer.from(data))).toBe(true);
    mem.writePage(2, data);
    mem.writePage(3, data);
    expect(Buffer.from(mem.hostView(2)).equals(Buffer.from(mem.hostView(3)))).toBe(false);
  });

  it('two VMs have different keys: one guest cannot read the other memory', () => {
    const a = GuestMemory.create(8);
    const b = GuestMemory.create(8);
    const data = new Uint8Array(4096).fill(7);
    a.writePage(0, data);
    b.bytes.set(a.hostView(0), 0);
    expect(Buffer.from(b.readPage(0)).equals(Buffer.from(data))).toBe(false);
  });

  it('converting a page makes its old content undefined under the new c-bit', () => {
    const mem = GuestMemory.create(8);
    const data = new Uint8Array(4096).fill(9);
    mem.writePage(4, data);
    mem.setCbits(4, 1, false);
    expect(mem.written.test(4)).toBe(false);
    expect(Buffer.from(mem.readPage(4)).equals(Buffer.from(data))).toBe(false);
  });

  it('rejects bad sizes and addresses', () => {
    expect(() => GuestMemory.create(0)).toThrow(/guest size 0 pages/);
    const mem = GuestMemory.create(4);
    expect(() => mem.writePage(4, new Uint8Array(4096))).toThrow(/gfn 4 is outside guest memory/);
    expect(() => mem.writePage(0, new Uint8Array(10))).toThrow(/takes 4096 bytes, got 10/);
  });
});
