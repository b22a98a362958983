/**
 * The source's verification reference (docs/design.md §3 rule 6): the guest's
 * view of every page at pause. Most of the hashing is done before the pause
 * (large guests), then brought up to date at pause.
 */
import { PageBitmap } from '../common/page-bitmap.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import { guestViewDigests, refreshDigests } from './parallel-digests.js';

/** Digests taken while the guest ran, with the c-bit table they were taken under. */
export interface EarlyDigests {
  digests: Uint8Array;
  cbits: Uint32Array;
}

/**
 * Hashes the guest's view of every page while it runs, under a copy of the
 * c-bit table taken first (so a conversion during the hashing shows up as a
 * difference at pause).
 */
export async function earlyDigests(memory: GuestMemory): Promise<EarlyDigests> {
  const cbits = memory.cbits.words.slice();
  const digests = await guestViewDigests(memory.key, memory.bytes, memory.cbits.words, memory.npages);
  return { digests, cbits };
}

/**
 * At pause: rehashes the pages the final harvest found dirty and those
 * whose c-bit differs from the early table. A page written while it was
 * being hashed is dirty (the bit is set after the write), so it is redone.
 */
export function finishDigests(memory: GuestMemory, early: EarlyDigests, dirty: PageBitmap): Uint8Array {
  const changed = new PageBitmap(memory.npages);
  changed.words.set(early.cbits);
  changed.xor(memory.cbits).or(dirty);
  refreshDigests(early.digests, memory.key, memory.bytes, memory.cbits.words, changed);
  return early.digests;
}
