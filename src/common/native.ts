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
/** An open, mapped sysgenid counter file (native; unmapped by sysgenidCounterClose or the GC). */
export interface SysgenidCounterHandle {
  readonly __sysgenidCounter: unique symbol;
}

/** The credentials of the process at the other end of a Unix socket, taken at connect(). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

export interface NativeAddon {
  bitmapSetRange(bitmap: Uint32Array, gfn: number, npages: number): void;
  bitmapClearRange(bitmap: Uint32Array, gfn: number, npages: number): void;
  /** setRange/clearRange with one atomic read-modify-write per word, for shared bitmaps. */
  bitmapSetRangeAtomic(bitmap: Uint32Array, gfn: number, npages: number): void;
  bitmapClearRangeAtomic(bitmap: Uint32Array, gfn: number, npages: number): void;
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
  /**
   * AES-128-XTS over npages 4 KiB pages, each one data unit with tweak = its
   * GPA (firstGpa + i * 4096). key is 32 bytes (two different halves); src
   * and dst may be the same memory.
   */
  xtsPages(
    key: Uint8Array,
    encrypt: boolean,
    src: Uint8Array,
    dst: Uint8Array,
    firstGpa: number,
    npages: number,
  ): void;
  /**
   * AES-256-GCM seals page i of src into dst at i * 4112 (ciphertext, 16-byte
   * tag); nonce = seq (u64 LE) + 4 zero bytes, AAD = gpa (u64 LE) + seq (u64 LE),
   * seq = firstSeq + i.
   */
  gcmSealPages(key: Uint8Array, src: Uint8Array, dst: Uint8Array, gpas: Float64Array, firstSeq: number): void;
  /** The inverse of gcmSealPages; returns the index of the first page that fails to verify, or -1. */
  gcmOpenPages(
    key: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    gpas: Float64Array,
    firstSeq: number,
  ): number;
  /** XTS of memory page gfns[i] (tweak = its GPA) into out at i * 4096. */
  xtsGather(key: Uint8Array, encrypt: boolean, memory: Uint8Array, out: Uint8Array, gfns: Float64Array): void;
  /** XTS of src page i into memory page gfns[i] (tweak = its GPA). */
  xtsScatter(
    key: Uint8Array,
    encrypt: boolean,
    src: Uint8Array,
    memory: Uint8Array,
    gfns: Float64Array,
  ): void;
  /** SHA-256 of the guest view of pages (firstGfn, npages): decrypted where cbits has the bit set. */
  viewDigests(
    key: Uint8Array,
    memory: Uint8Array,
    cbits: Uint32Array,
    firstGfn: number,
    npages: number,
    out: Uint8Array,
  ): void;
  /**
   * Opens (creating 0644) the sysgenid counter file, grows it to one 4096-byte
   * page if shorter (never shrinks it), maps it MAP_SHARED read-write and
   * stamps the magic and version at offset 8. Offset 0 is left unchanged.
   * Throws an Error with `code` (the errno name) naming the call that failed.
   */
  sysgenidCounterOpen(path: string): SysgenidCounterHandle;
  /** One atomic little-endian u32 release store at offset 0, then futimens (mtime) on the file. */
  sysgenidCounterStore(handle: SysgenidCounterHandle, value: number): void;
  /** One atomic load of offset 0. */
  sysgenidCounterLoad(handle: SysgenidCounterHandle): number;
  /** Unmaps and closes; closing twice is a no-op. */
  sysgenidCounterClose(handle: SysgenidCounterHandle): void;
  /** SO_PEERCRED of a connected Unix socket fd. */
  sysgenidPeerCredentials(fd: number): PeerCredentials;
  /**
   * Benchmark kernel: checks the generation of the file at path `iterations`
   * times with a load from a read-only mapping ("map") or a 4-byte pread
   * ("pread"); returns the loop's elapsed ns and the sum of values read.
   */
  sysgenidProbeLoop(
    path: string,
    mode: 'map' | 'pread',
    iterations: number,
  ): { elapsedNs: number; checksum: number };
  /**
   * Takes an exclusive POSIX record lock on path (created with mode, whatever
   * the umask): { fd } when this process now holds it (until unlockFile or
   * exit), { holderPid } when another process holds it.
   */
  lockFile(path: string, mode: number): { fd: number } | { holderPid: number };
  /** Releases a lock taken by lockFile. */
  unlockFile(fd: number): void;
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
