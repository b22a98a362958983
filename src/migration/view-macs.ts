/**
 * A table of view MACs (page-crypto viewMacs: GMAC of a page's guest view,
 * 16 bytes a page, docs/design.md §3) taken as pages move: the source's
 * seal or copy into a frame and the destination's open or copy into guest
 * memory write each page's MAC in the same pass (MacOutput `byGfn`), so no
 * separate hashing pass over the guest is needed.
 *
 * Invariant: for every page marked `valid`, its MAC is the view of its bytes
 * as they were when last moved (or hashed), under the c-bit recorded in
 * `under`: a sealed page is the view under c-bit 1 (its plaintext), a raw
 * page the view under c-bit 0. finish() rehashes, under the final c-bit table
 * (the paused one on the source, the received one on the destination), every
 * page not valid and every page whose recorded c-bit differs from that
 * table: every other MAC is then the view under that table of the page's
 * bytes at the end. No MAC is ever taken under a live, changing table.
 */
import { InvalidArgumentError } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import { type MacOutput, VIEW_MAC_BYTES, viewMacs } from '../common/page-crypto.js';
import { gfnsToRuns } from '../common/ranges.js';
import { residentBuffer } from '../common/resident-buffer.js';
import type { MigratableMemory } from '../vmm/backend.js';

export class ViewMacTable {
  /** 16 bytes a page, page gfn at gfn * 16. */
  readonly macs: Uint8Array;
  /** Where the pipeline calls write the MACs of the pages they move. */
  readonly output: MacOutput;
  private readonly valid: PageBitmap;
  private readonly under: PageBitmap;

  /**
   * `macs`: where the table lives (npages * 16 bytes, e.g. inside a DIGESTS
   * payload); by default a new one on resident huge pages, since every
   * entry is written during the bulk round (resident-buffer.ts).
   */
  constructor(
    private readonly memory: MigratableMemory,
    readonly key: Uint8Array,
    macs: Uint8Array = residentBuffer(memory.npages * VIEW_MAC_BYTES),
  ) {
    if (macs.byteLength !== memory.npages * VIEW_MAC_BYTES) {
      throw new InvalidArgumentError(
        'macs',
        `a view-MAC table of ${memory.npages} pages is ${memory.npages * VIEW_MAC_BYTES} bytes, got ${macs.byteLength}`,
      );
    }
    this.macs = macs;
    this.output = { key, out: this.macs, byGfn: true };
    this.valid = new PageBitmap(memory.npages);
    this.under = new PageBitmap(memory.npages);
  }

  /**
   * Records that pages `gfns` were just moved with their MACs written to
   * `output`: sealed (`encrypted`, the plaintext's view: c-bit 1) or raw
   * (c-bit 0). Call right after the pipeline call, before any later harvest.
   */
  noteMoved(gfns: Float64Array, encrypted: boolean): void {
    const { valid, under } = this;
    // A batch is mostly consecutive gfns: one range call per run, not per page
    // (per page, these calls were a fifth of a side's time for shared pages).
    for (const { gfn, npages } of gfnsToRuns(gfns)) {
      valid.setRange(gfn, npages);
      if (encrypted) under.setRange(gfn, npages);
      else under.clearRange(gfn, npages);
    }
  }

  /** Pages written since they were moved (a harvest): their MACs are stale. */
  invalidate(written: PageBitmap): void {
    this.valid.andNot(written);
  }

  /** Pages whose MAC is not the view under `cbits` (a table of the same guest): not valid, or taken under the other c-bit. */
  stale(cbits: PageBitmap): PageBitmap {
    const notValid = new PageBitmap(this.memory.npages);
    notValid.setRange(0, this.memory.npages);
    return notValid.andNot(this.valid).or(this.under.clone().xor(cbits));
  }

  /**
   * Rehashes every page of `pages` under `cbits` (which must not change
   * meanwhile: a snapshot, or the table of a paused or finished guest) and
   * records them valid under it. Returns how many pages.
   */
  rehash(pages: PageBitmap, cbits: PageBitmap): number {
    let n = 0;
    for (const run of pages.runs()) {
      const out = this.macs.subarray(run.gfn * VIEW_MAC_BYTES, (run.gfn + run.npages) * VIEW_MAC_BYTES);
      viewMacs(this.memory.codec, this.key, this.memory.bytes, cbits.words, run.gfn, run.npages, out);
      n += run.npages;
    }
    this.valid.or(pages);
    const encrypted = pages.clone().andNot(pages.clone().andNot(cbits)); // pages & cbits
    this.under.andNot(pages).or(encrypted);
    return n;
  }

  /**
   * Brings every MAC to the view under `cbits` (the final table: it no
   * longer changes) and returns the table and how many pages were rehashed.
   */
  finish(cbits: PageBitmap): { macs: Uint8Array; rehashed: number } {
    const rehashed = this.rehash(this.stale(cbits), cbits);
    return { macs: this.macs, rehashed };
  }
}
