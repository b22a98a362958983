/**
 * The destination's digests started before the final round (docs/design.md §3
 * keeps verification inside the downtime; this keeps most of its cost out):
 * every page is hashed under the source's page tables from just before the
 * pause, then the pages received afterwards, and those whose c-bit differs
 * in the final tables, are hashed again.
 */
import { PeerError } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import { guestViewDigests, refreshDigests } from './parallel-digests.js';

export class EarlyDigests {
  private readonly received: PageBitmap;

  private constructor(
    private readonly cbits: PageBitmap,
    private readonly digests: Promise<Uint8Array>,
  ) {
    this.received = new PageBitmap(cbits.npages);
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

  async finish(memory: GuestMemory): Promise<Uint8Array> {
    const digests = await this.digests;
    const changed = this.cbits.clone().xor(memory.cbits).or(this.received);
    refreshDigests(digests, memory.key, memory.bytes, memory.cbits.words, changed);
    return digests;
  }
}
