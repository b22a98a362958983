/**
 * PageBitmap: one bit per guest frame, backed by an ArrayBuffer or a
 * SharedArrayBuffer (for dirty logs written by vCPU threads). Every bulk
 * operation runs in the native addon; see bitmap-reference.ts for the
 * plain-TypeScript definition each kernel must match.
 */
import { InvalidArgumentError } from './errors.js';
import { nativeAddon } from './native.js';
import type { PageRange } from './ranges.js';

/** 2^28 pages: a 1 TiB guest. Larger bitmaps are refused. */
export const MAX_BITMAP_PAGES = 2 ** 28;

/** Number of Uint32 words a bitmap of npages needs (rounded to whole 64-bit words). */
export function bitmapWordCount(npages: number): number {
  return Math.ceil(npages / 64) * 2;
}

export class PageBitmap {
  readonly npages: number;
  /** The bits; length is even so native code may read whole 64-bit words. */
  readonly words: Uint32Array;

  /**
   * A zeroed bitmap of npages bits; with `shared`, backed by a
   * SharedArrayBuffer that worker threads can set bits in with Atomics.or.
   */
  constructor(npages: number, options: { shared?: boolean; buffer?: ArrayBuffer | SharedArrayBuffer } = {}) {
    if (!Number.isInteger(npages) || npages < 0 || npages > MAX_BITMAP_PAGES) {
      throw new InvalidArgumentError(
        'npages',
        `npages ${npages} must be an integer in [0, ${MAX_BITMAP_PAGES}] (a 1 TiB guest at most)`,
      );
    }
    this.npages = npages;
    const bytes = bitmapWordCount(npages) * 4;
    let buffer = options.buffer;
    if (buffer === undefined) buffer = options.shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
    else if (buffer.byteLength < bytes) {
      throw new InvalidArgumentError(
        'buffer',
        `buffer of ${buffer.byteLength} bytes is too small for ${npages} pages (${bytes} bytes needed)`,
      );
    }
    this.words = new Uint32Array(buffer, 0, bitmapWordCount(npages));
  }

  /** The backing buffer, to hand to a worker thread. */
  get buffer(): ArrayBuffer | SharedArrayBuffer {
    return this.words.buffer;
  }

  private checkRange(gfn: number, npages: number): void {
    if (
      !Number.isInteger(gfn) ||
      gfn < 0 ||
      !Number.isInteger(npages) ||
      npages < 0 ||
      gfn + npages > this.npages
    ) {
      throw new InvalidArgumentError(
        'gfn',
        `range (gfn ${gfn}, npages ${npages}) is outside the bitmap of ${this.npages} pages`,
      );
    }
  }

  /** Whether frame gfn's bit is set. */
  test(gfn: number): boolean {
    this.checkRange(gfn, 1);
    return ((this.words[gfn >>> 5] >>> (gfn & 31)) & 1) === 1;
  }

  /** Sets one bit atomically (safe against concurrent harvests). */
  markAtomic(gfn: number): void {
    Atomics.or(this.words, gfn >>> 5, 1 << (gfn & 31));
  }

  setRange(gfn: number, npages: number): void {
    this.checkRange(gfn, npages);
    nativeAddon().bitmapSetRange(this.words, gfn, npages);
  }

  /**
   * Sets every run of `runs` = [gfn0, npages0, gfn1, npages1, ...] in one
   * native call; a run outside the bitmap is refused before any bit is set.
   */
  setRuns(runs: Float64Array): void {
    nativeAddon().bitmapSetRuns(this.words, runs, this.npages);
  }

  clearRange(gfn: number, npages: number): void {
    this.checkRange(gfn, npages);
    nativeAddon().bitmapClearRange(this.words, gfn, npages);
  }

  /** setRange safe against other threads updating the same words (Atomics.or, harvests, atomic ranges). */
  setRangeAtomic(gfn: number, npages: number): void {
    this.checkRange(gfn, npages);
    nativeAddon().bitmapSetRangeAtomic(this.words, gfn, npages);
  }

  /** clearRange safe against other threads updating the same words. */
  clearRangeAtomic(gfn: number, npages: number): void {
    this.checkRange(gfn, npages);
    nativeAddon().bitmapClearRangeAtomic(this.words, gfn, npages);
  }

  /** Number of set bits in (gfn, npages); the whole bitmap by default. */
  count(gfn = 0, npages = this.npages - gfn): number {
    this.checkRange(gfn, npages);
    return nativeAddon().bitmapCountRange(this.words, gfn, npages);
  }

  /** The set bits as maximal runs, ascending by gfn. */
  runs(): PageRange[] {
    const flat = nativeAddon().bitmapToRuns(this.words, this.npages);
    const out: PageRange[] = new Array(flat.length / 2);
    for (let i = 0; i < flat.length; i += 2) out[i / 2] = { gfn: flat[i], npages: flat[i + 1] };
    return out;
  }

  private checkSameSize(other: PageBitmap): void {
    if (other.npages !== this.npages) {
      throw new InvalidArgumentError(
        'other',
        `bitmaps differ in size (${this.npages} vs ${other.npages} pages); combine bitmaps of one guest`,
      );
    }
  }

  /** this |= other */
  or(other: PageBitmap): this {
    this.checkSameSize(other);
    nativeAddon().bitmapOr(this.words, this.words, other.words);
    return this;
  }

  /** this &= ~other */
  andNot(other: PageBitmap): this {
    this.checkSameSize(other);
    nativeAddon().bitmapAndNot(this.words, this.words, other.words);
    return this;
  }

  /** this ^= other */
  xor(other: PageBitmap): this {
    this.checkSameSize(other);
    nativeAddon().bitmapXor(this.words, this.words, other.words);
    return this;
  }

  /**
   * Atomically moves every set bit of this (shared) bitmap into `out` and
   * clears it here, KVM_GET_DIRTY_LOG style. Returns the number of bits moved.
   * A bit set concurrently lands in this harvest or the next, never lost.
   */
  harvestInto(out: PageBitmap): number {
    this.checkSameSize(out);
    return nativeAddon().bitmapHarvest(this.words, out.words);
  }

  clone(): PageBitmap {
    const copy = new PageBitmap(this.npages);
    copy.words.set(this.words);
    return copy;
  }
}
