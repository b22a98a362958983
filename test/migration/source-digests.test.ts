/**
 * The source's verification reference is the view at pause: conversions
 * that land between the snapshot of the page tables and the hashing of the
 * pages (the digest workers run while the guest does) must not leak into
 * the reference. A page converted and converted back during the hashing is
 * the case that made correct 2-4 GiB migrations report corruption.
 */
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { viewDigests } from '../../src/common/page-crypto.js';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { PARALLEL_THRESHOLD } from '../../src/migration/parallel-digests.js';
import { ReferenceDigests, snapshotTables } from '../../src/migration/source-digests.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

const NPAGES = PARALLEL_THRESHOLD; // hashed on worker threads, concurrently with this thread

/** The last pages of every chunk the digest workers may be given: hashed last. */
function lateGfns(): number[] {
  const out = new Set<number>();
  for (let workers = 1; workers <= Math.max(4, os.availableParallelism()); workers++) {
    const per = Math.ceil(NPAGES / workers);
    for (let end = per; end <= NPAGES; end += per) for (let i = 1; i <= 4; i++) out.add(end - i);
  }
  return [...out].filter((g) => g >= 0 && g < NPAGES).sort((a, b) => a - b);
}

function written(): GuestMemory {
  const memory = GuestMemory.create(NPAGES);
  memory.setCbits(NPAGES / 2, NPAGES / 2, false);
  const page = new Uint8Array(PAGE_SIZE);
  for (const g of lateGfns()) {
    page.fill(g & 0xff);
    memory.writePage(g, page);
  }
  return memory;
}

describe('source verification digests', () => {
  it('equal the view under the paused page tables although pages converted between the snapshot and their hashing', async () => {
    const memory = written();
    const late = lateGfns();
    const tables = snapshotTables(memory);
    const reference = ReferenceDigests.start(memory, tables);
    // The guest runs on while the workers hash: every late page is converted now...
    for (const g of late) memory.setCbits(g, 1, !memory.isEncrypted(g));
    await reference.catchUp();
    // ...and all but one converted back before the pause: the paused table
    // equals the snapshot for those pages, yet they were converted meanwhile.
    const keptConverted = late[0];
    for (const g of late.slice(1)) memory.setCbits(g, 1, !memory.isEncrypted(g));
    const { digests, rehashed } = await reference.finish(new PageBitmap(NPAGES));
    const paused = viewDigests(memory.key, memory.bytes, memory.cbits.words, 0, NPAGES);
    expect(Buffer.from(digests).equals(Buffer.from(paused))).toBe(true);
    // Only the page whose c-bit differs at pause was hashed again.
    expect(rehashed).toBe(1);
    expect(memory.isEncrypted(keptConverted)).not.toBe(tables.test(keptConverted));
  });

  it('rehash every page written since the snapshot: noted harvests while the guest runs, the final one at pause', async () => {
    const memory = written();
    memory.dirty.harvestInto(new PageBitmap(NPAGES));
    const reference = ReferenceDigests.start(memory, snapshotTables(memory));
    const page = new Uint8Array(PAGE_SIZE).fill(0xab);
    memory.writePage(7, page);
    const live = new PageBitmap(NPAGES);
    memory.dirty.harvestInto(live);
    reference.noteWritten(live);
    expect(await reference.catchUp()).toBe(1);
    memory.writePage(7, page.fill(0xcd)); // written again after its rehash
    memory.writePage(NPAGES - 1, page);
    const dirty = new PageBitmap(NPAGES);
    memory.dirty.harvestInto(dirty);
    const { digests, rehashed } = await reference.finish(dirty);
    expect(rehashed).toBe(2);
    const paused = viewDigests(memory.key, memory.bytes, memory.cbits.words, 0, NPAGES);
    expect(Buffer.from(digests).equals(Buffer.from(paused))).toBe(true);
  });
});
