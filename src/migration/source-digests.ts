/**
 * The source's verification reference (docs/design.md §3 rule 6): the guest's
 * view of every page at pause, under the guest's c-bit table at pause,
 * never under a live table.
 *
 * Most of the hashing is done while the guest runs, during the pre-copy
 * rounds: every page is hashed under a SNAPSHOT of the guest's c-bit table
 * (the one the destination receives as PAGE_TABLES_PRELIM and hashes under).
 * Invariant: a page's digest is its view under the snapshot's c-bit, of its
 * bytes as they were when the digest read them, and a page written since is
 * in `pending` or in a harvest not yet noted. catchUp() rehashes the pending
 * pages while the guest runs; at pause finish() rehashes, under the paused
 * table, the pages written since (pending and the final harvest) and those
 * whose c-bit at pause differs from the snapshot's. Every other page's
 * digest is exact: same c-bit, same bytes as at pause. (Hashing under the
 * live table instead records, for a page converted and converted back while
 * it was hashed, the view under the intermediate c-bit, which the paused
 * table does not show.)
 */
import { PageBitmap } from '../common/page-bitmap.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import { guestViewDigests, refreshDigests } from './parallel-digests.js';

/** A copy of the guest's c-bit table as it is now, in shared memory (digest workers read it). */
export function snapshotTables(memory: GuestMemory): PageBitmap {
  const tables = new PageBitmap(memory.npages, { shared: true });
  tables.words.set(memory.cbits.words);
  return tables;
}

export class ReferenceDigests {
  /** Pages written since the snapshot whose digest is not yet redone. */
  private readonly pending: PageBitmap;
  private digests: Uint8Array | undefined;
  private readonly hashing: Promise<void>;
  /** Milliseconds per page of a single-thread rehash, measured (the downtime estimate uses it). */
  msPerPage = 0;

  private constructor(
    private readonly memory: GuestMemory,
    readonly tables: PageBitmap,
  ) {
    this.pending = new PageBitmap(memory.npages);
    this.hashing = guestViewDigests(memory.key, memory.bytes, tables.words, memory.npages).then((d) => {
      this.digests = d;
    });
    this.hashing.catch(() => {});
  }

  /**
   * Takes the snapshot `tables` (from snapshotTables, never the live table)
   * and starts hashing every page under it on the digest workers.
   */
  static start(memory: GuestMemory, tables: PageBitmap): ReferenceDigests {
    return new ReferenceDigests(memory, tables);
  }

  /** Records a harvest: every page written since the snapshot must be noted here. */
  noteWritten(harvest: PageBitmap): void {
    this.pending.or(harvest);
  }

  /** Whether the first pass is done (catchUp does not wait then). */
  get hashed(): boolean {
    return this.digests !== undefined;
  }

  /**
   * While the guest runs: waits for the first pass, then rehashes the pending
   * pages under the snapshot. Returns how many.
   */
  async catchUp(): Promise<number> {
    await this.hashing;
    return this.rehash(this.pending, this.tables);
  }

  /**
   * At pause (the guest's c-bit table no longer changes): brings the digests
   * to the paused view. `finalHarvest` holds the pages written since the
   * last noted harvest. Returns the digests and how many pages were redone.
   */
  async finish(finalHarvest: PageBitmap): Promise<{ digests: Uint8Array; rehashed: number }> {
    await this.hashing;
    const changed = this.tables.clone().xor(this.memory.cbits).or(this.pending).or(finalHarvest);
    const rehashed = this.rehash(changed, this.memory.cbits);
    return { digests: this.digests!, rehashed };
  }

  private rehash(pages: PageBitmap, under: PageBitmap): number {
    const t0 = performance.now();
    const n = refreshDigests(this.digests!, this.memory.key, this.memory.bytes, under.words, pages);
    if (n >= 64) this.msPerPage = (performance.now() - t0) / n;
    pages.clearRange(0, pages.npages);
    return n;
  }
}
