/**
 * The destination's digests, started when the source's page-table snapshot
 * arrives (PAGE_TABLES_PRELIM, after the bulk round), so that little of
 * their cost lands in the downtime: every page is hashed under the
 * snapshot; the pages received since are hashed again at each round's end
 * (under the snapshot, once the first pass is done), and at the end the
 * pages received since and those whose c-bit in the final tables differs
 * from the snapshot's are hashed under the final tables.
 */
import { PeerError } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import { guestViewDigests, refreshDigests } from './parallel-digests.js';

export class EarlyDigests {
  private readonly received: PageBitmap;
  private done: Uint8Array | undefined;

  private constructor(
    private readonly cbits: PageBitmap,
    private readonly digests: Promise<Uint8Array>,
  ) {
    this.received = new PageBitmap(cbits.npages);
    digests.then(
      (d) => {
        this.done = d;
      },
      () => {},
    );
  }

  static start(memory: GuestMemory, tables: Buffer): EarlyDigests {
    const cbits = new PageBitmap(memory.npages, { shared: true });
    if (tables.length !== cbits.words.byteLength) {
      throw new PeerError(
        `PAGE_TABLES_PRELIM: expected ${cbits.words.byteLength} bytes, got ${tables.length}`,
      );
    }
    new Uint8Array(cbits.words.buffer, 0, cbits.words.byteLength).set(tables);
    const digests = guestViewDigests(memory.key, memory.bytes, cbits.words, memory.npages);
    digests.catch(() => {});
    return new EarlyDigests(cbits, digests);
  }

  /** Pages written from here on are hashed again at the end. */
  markReceived(gfns: Float64Array): void {
    for (const g of gfns) this.received.markAtomic(g);
  }

  /** Whether the first pass is done. */
  get hashed(): boolean {
    return this.done !== undefined;
  }

  /**
   * At a round's end: once the first pass is done, rehashes the pages
   * received since under the snapshot (a page received later is marked again).
   */
  catchUp(memory: GuestMemory): void {
    if (!this.done) return;
    refreshDigests(this.done, memory.key, memory.bytes, this.cbits.words, this.received);
    this.received.clearRange(0, this.received.npages);
  }

  async finish(memory: GuestMemory): Promise<Uint8Array> {
    const digests = await this.digests;
    const changed = this.cbits.clone().xor(memory.cbits).or(this.received);
    refreshDigests(digests, memory.key, memory.bytes, memory.cbits.words, changed);
    return digests;
  }
}
