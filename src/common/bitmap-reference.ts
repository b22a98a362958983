/**
 * Plain-TypeScript definitions of the native bitmap kernels, one bit at a time.
 * They are the specification the property tests hold the native code to, and
 * the baseline the benchmarks measure it against. Not for production paths.
 */
import type { PageRange } from './ranges.js';

export function refTest(words: Uint32Array, gfn: number): boolean {
  return ((words[gfn >>> 5] >>> (gfn & 31)) & 1) === 1;
}

export function refSetRange(words: Uint32Array, gfn: number, npages: number): void {
  for (let i = gfn; i < gfn + npages; i++) words[i >>> 5] |= 1 << (i & 31);
}

export function refClearRange(words: Uint32Array, gfn: number, npages: number): void {
  for (let i = gfn; i < gfn + npages; i++) words[i >>> 5] &= ~(1 << (i & 31));
}

export function refCountRange(words: Uint32Array, gfn: number, npages: number): number {
  let n = 0;
  for (let i = gfn; i < gfn + npages; i++) if (refTest(words, i)) n++;
  return n;
}

/** Runs of set bits among the first nbits, scanning bit by bit. */
export function refToRuns(words: Uint32Array, nbits: number): PageRange[] {
  const runs: PageRange[] = [];
  let start = -1;
  for (let i = 0; i < nbits; i++) {
    const set = refTest(words, i);
    if (set && start < 0) start = i;
    if (!set && start >= 0) {
      runs.push({ gfn: start, npages: i - start });
      start = -1;
    }
  }
  if (start >= 0) runs.push({ gfn: start, npages: nbits - start });
  return runs;
}

export function refCombine(
  dst: Uint32Array,
  a: Uint32Array,
  b: Uint32Array,
  op: 'or' | 'andNot' | 'xor',
): void {
  for (let i = 0; i < dst.length; i++) {
    if (op === 'or') dst[i] = a[i] | b[i];
    else if (op === 'andNot') dst[i] = a[i] & ~b[i];
    else dst[i] = a[i] ^ b[i];
  }
}
