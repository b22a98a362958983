/**
 * The source's verification reference is the view at pause: the view MACs
 * are taken as pages are sent, each under the perspective it was sent from,
 * and conversions or writes after the send must not leak into the
 * reference. A page converted and converted back between two hashings is
 * the case that once made correct 2-4 GiB migrations report corruption.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import {
  copyPagesToFrame,
  SEALED_PAGE_BYTES,
  sealPagesToFrame,
  VIEW_MAC_BYTES,
  viewMacs,
} from '../../src/common/page-crypto.js';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { ReferenceDigests } from '../../src/migration/source-digests.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

const NPAGES = 4096;
const MAC_KEY = new Uint8Array(16).fill(0x5a);
const GCM_KEY = new Uint8Array(32).fill(0x11);

function written(): GuestMemory {
  const memory = GuestMemory.create(NPAGES);
  memory.setCbits(NPAGES / 2, NPAGES / 2, false);
  const page = new Uint8Array(PAGE_SIZE);
  for (let g = 0; g < NPAGES; g += 7) {
    page.fill(g & 0xff);
    memory.writePage(g, page);
  }
  memory.dirty.harvestInto(new PageBitmap(NPAGES));
  return memory;
}

/** Sends pages as the page sender does: each from the guest's current c-bit, MACs in the same pass. */
function send(memory: GuestMemory, reference: ReferenceDigests, gfns: number[]): void {
  for (const encrypted of [true, false]) {
    const list = Float64Array.from(gfns.filter((g) => memory.isEncrypted(g) === encrypted));
    if (list.length === 0) continue;
    if (encrypted) {
      const frame = new Uint8Array(list.length * SEALED_PAGE_BYTES);
      sealPagesToFrame(memory.key, GCM_KEY, memory.bytes, list, 0, frame, 0, reference.table.output);
    } else {
      const frame = new Uint8Array(list.length * PAGE_SIZE);
      copyPagesToFrame(memory.bytes, list, frame, 0, reference.table.output);
    }
    reference.table.noteMoved(list, encrypted);
  }
}

const every = Array.from({ length: NPAGES }, (_, g) => g);
const paused = (memory: GuestMemory) =>
  Buffer.from(viewMacs(memory.key, MAC_KEY, memory.bytes, memory.cbits.words, 0, NPAGES));

describe('source verification digests (view MACs taken as pages are sent)', () => {
  it('equal the view under the paused page tables although pages converted after they were sent', () => {
    const memory = written();
    const reference = new ReferenceDigests(memory, MAC_KEY);
    send(memory, reference, every);
    const late = [5, 6, 100, NPAGES / 2 - 1, NPAGES / 2, NPAGES - 1];
    for (const g of late) memory.setCbits(g, 1, !memory.isEncrypted(g));
    // ...all but one converted back before the pause: only that one differs.
    for (const g of late.slice(1)) memory.setCbits(g, 1, !memory.isEncrypted(g));
    const { digests, rehashed } = reference.finish();
    expect(Buffer.from(digests).equals(paused(memory))).toBe(true);
    expect(rehashed).toBe(1);
  });

  it('rehash every page written since it was sent; a page sent again after its write is exact already', () => {
    const memory = written();
    const reference = new ReferenceDigests(memory, MAC_KEY);
    send(memory, reference, every);
    const page = new Uint8Array(PAGE_SIZE).fill(0xab);
    memory.writePage(7, page);
    memory.writePage(NPAGES - 1, page);
    memory.writePage(2000, page);
    const harvest = new PageBitmap(NPAGES);
    memory.dirty.harvestInto(harvest);
    reference.noteWritten(harvest);
    send(memory, reference, [2000]); // resent in the round: its MAC is taken again
    const { digests, rehashed } = reference.finish();
    expect(rehashed).toBe(2);
    expect(Buffer.from(digests).equals(paused(memory))).toBe(true);
  });

  it('any single-bit difference in a page changes its view MAC, encrypted or shared', () => {
    const memory = written();
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: NPAGES - 1 }),
        fc.integer({ min: 0, max: PAGE_SIZE * 8 - 1 }),
        (g, bit) => {
          const before = viewMacs(memory.key, MAC_KEY, memory.bytes, memory.cbits.words, g, 1);
          // Flip one bit of the guest's view (write through the guest's c-bit).
          const view = memory.readPage(g);
          view[bit >> 3] ^= 1 << (bit & 7);
          memory.writePage(g, view);
          const after = viewMacs(memory.key, MAC_KEY, memory.bytes, memory.cbits.words, g, 1);
          view[bit >> 3] ^= 1 << (bit & 7);
          memory.writePage(g, view);
          return after.length === VIEW_MAC_BYTES && !Buffer.from(before).equals(Buffer.from(after));
        },
      ),
      { numRuns: 300, seed: 15 },
    );
  });
});
