/**
 * The source's verification reference (docs/design.md §3 rule 6): the guest's
 * view of every page at pause, under the guest's c-bit table at pause,
 * never under a live table.
 *
 * Most of the hashing is done before the pause, while the guest runs: every
 * page is hashed under a SNAPSHOT of the guest's c-bit table (the same one
 * the destination receives as PAGE_TABLES_PRELIM and hashes under). At
 * pause, a page is hashed again, under the paused table, when its c-bit at
 * pause differs from the snapshot's or it was written since the snapshot.
 * Every other page's digest is exact: same c-bit, same bytes as at pause.
 * (Hashing under the live table instead would record, for a page converted
 * and converted back while it was hashed, the view under the intermediate
 * c-bit, and the paused table would not show the difference.)
 */
import { PageBitmap } from '../common/page-bitmap.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import { guestViewDigests, refreshDigests } from './parallel-digests.js';

/** Digests taken while the guest ran, with the c-bit snapshot they were taken under. */
export interface EarlyDigests {
  digests: Uint8Array;
  /** The guest's c-bit table when the hashing began (shared memory, so digest workers read it). */
  tables: PageBitmap;
  /** Pages hashed per millisecond (a rate measured in this migration, for the downtime estimate). */
  pagesPerMs: number;
}

/** A copy of the guest's c-bit table as it is now, in shared memory. */
export function snapshotTables(memory: GuestMemory): PageBitmap {
  const tables = new PageBitmap(memory.npages, { shared: true });
  tables.words.set(memory.cbits.words);
  return tables;
}

/**
 * Hashes the guest's view of every page under `tables` (a snapshot taken by
 * snapshotTables, never the live table) while the guest runs.
 */
export async function earlyDigests(memory: GuestMemory, tables: PageBitmap): Promise<EarlyDigests> {
  const t0 = performance.now();
  const digests = await guestViewDigests(memory.key, memory.bytes, tables.words, memory.npages);
  const pagesPerMs = memory.npages / Math.max(1e-3, performance.now() - t0);
  return { digests, tables, pagesPerMs };
}

/**
 * At pause (the guest's c-bit table no longer changes): brings the early
 * digests to the paused view. `writtenSince` must hold every page written
 * since the snapshot (the final harvest does: the last live harvest came
 * before the snapshot, and a page's dirty bit is set after its write).
 * Returns the digests and how many pages were hashed again.
 */
export function finishDigests(
  memory: GuestMemory,
  early: EarlyDigests,
  writtenSince: PageBitmap,
): { digests: Uint8Array; rehashed: number } {
  const changed = early.tables.clone().xor(memory.cbits).or(writtenSince);
  const rehashed = refreshDigests(early.digests, memory.key, memory.bytes, memory.cbits.words, changed);
  return { digests: early.digests, rehashed };
}
