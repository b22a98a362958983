/**
 * The one loader of the native addon, and its typed surface. Nothing past this
 * module sees `any`: every native function is listed in NativeAddon.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { NativeAddonMissingError } from './errors.js';

/**
 * Page bitmaps are Uint32Arrays of even length (whole 64-bit words); bit i
 * is guest frame i. Ranges are (gfn, npages).
 */
export interface NativeAddon {
  bitmapSetRange(bitmap: Uint32Array, gfn: number, npages: number): void;
  bitmapClearRange(bitmap: Uint32Array, gfn: number, npages: number): void;
  bitmapCountRange(bitmap: Uint32Array, gfn: number, npages: number): number;
  /** Runs of set bits among the first nbits bits: [gfn0, npages0, gfn1, npages1, ...], ascending. */
  bitmapToRuns(bitmap: Uint32Array, nbits: number): Float64Array;
  /** dst = a | b (dst may alias a or b). */
  bitmapOr(dst: Uint32Array, a: Uint32Array, b: Uint32Array): void;
  /** dst = a & ~b. */
  bitmapAndNot(dst: Uint32Array, a: Uint32Array, b: Uint32Array): void;
  /** dst = a ^ b. */
  bitmapXor(dst: Uint32Array, a: Uint32Array, b: Uint32Array): void;
  /**
   * Atomically moves every set bit of `shared` into `out` (OR) and clears it
   * in `shared`; returns the number of bits moved. Safe against concurrent
   * Atomics.or writers on the same SharedArrayBuffer: no bit is lost.
   */
  bitmapHarvest(shared: Uint32Array, out: Uint32Array): number;
}

const here = fileURLToPath(new URL('.', import.meta.url));
/** Relative to src/common or dist/common: both sit two levels below the root. */
const CANDIDATES = ['../../build/Release/sevtrack_native.node', '../../build/Debug/sevtrack_native.node'];

let loaded: NativeAddon | undefined;

/**
 * Loads the addon from the first of `paths` that exists. Throws
 * NativeAddonMissingError when none does; any other load error (a wrong ABI, a
 * dlopen failure) is rethrown as it is, never hidden.
 */
export function loadNativeAddon(paths: readonly string[]): NativeAddon {
  const require = createRequire(import.meta.url);
  for (const path of paths) {
    try {
      return require(path) as NativeAddon;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new NativeAddonMissingError(paths);
}

/** The addon built in this checkout (build/Release, then build/Debug), loaded once on first use. */
export function nativeAddon(): NativeAddon {
  loaded ??= loadNativeAddon(CANDIDATES.map((rel) => fileURLToPath(new URL(rel, `file://${here}`))));
  return loaded;
}
