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
  /** Sets every run of [gfn0, npages0, gfn1, npages1, ...] (bitmapToRuns' form) within the first nbits; all checked before any is set. */
  bitmapSetRuns(bitmap: Uint32Array, runs: Float64Array, nbits: number): void;
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
  /** A real VM on /dev/kvm (native/kvm/vm.h); construction throws with `code` ERR_KVM_* when KVM refuses. */
  KvmVm: new (
    config: KvmVmConfig,
  ) => KvmVmNative;
  /** What this host's KVM offers, probed once per process (each probe VM lives < 1 s). */
  kvmProbe(): KvmProbeResult;
  /** The numbers of native/guest/abi.h (guest memory layout, control-page offsets). */
  kvmLayout(): KvmLayout;
  /**
   * XORs every 8-byte word of bytes with the kvm backend's keystream for
   * (key, gpa of the word): raw bytes to the guest view of an encrypted page
   * and back (its own inverse). firstGpa and bytes.length are multiples of 8.
   */
  kvmKeystreamXor(key: Uint8Array, bytes: Uint8Array, firstGpa: number): void;
  /**
   * madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior of guest memory;
   * advisedBytes 0 where the kernel's THP mode is "never" (mode says which).
   */
  adviseHugePages(memory: Uint8Array): { advisedBytes: number; mode: string };
  /**
   * Makes every page of memory resident and writable, contents unchanged:
   * MADV_POPULATE_WRITE (populatedBytes; error says why not, a kernel before
   * 5.14), then one atomic add of zero per page from user space
   * (touchedBytes: every page, rounded outward), which under shadow paging
   * is what spares the first real access a fault in the host. A populate
   * failure other than EINVAL (ENOMEM, say) touches nothing: touchedBytes 0.
   */
  prefaultMemory(memory: Uint8Array): { populatedBytes: number; touchedBytes: number; error: string | null };
  /**
   * Gives the whole pages inside memory back to the kernel (MADV_DONTNEED:
   * they read as zero afterwards): a guest that moved on frees its RSS now,
   * not at garbage collection.
   */
  releaseMemory(memory: Uint8Array): { releasedBytes: number };
  /** Bytes from memory's first byte to the next 2 MiB boundary (0 when it starts on one). */
  hugePageOffset(memory: Uint8Array): number;
  /** SEV platform status from /dev/sev (SEV_PLATFORM_STATUS); `present` false where there is no /dev/sev. */
  sevPlatformStatus(): SevPlatformStatus;
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
  /**
   * The view MAC (16 bytes a page: GMAC under macKey, nonce = the GPA) of the
   * guest view of pages (firstGfn, npages) into out at i * 16; the cheap
   * replacement of viewDigests' SHA-256. `memoryKey` is the key of `cipher`
   * (MEMORY_CIPHER_IDS: 0 AES-128-XTS, 32 bytes, the default; 1 the kvm
   * keystream, 16 bytes).
   */
  viewMacs(
    memoryKey: Uint8Array,
    macKey: Uint8Array,
    memory: Uint8Array,
    cbits: Uint32Array,
    firstGfn: number,
    npages: number,
    out: Uint8Array,
    cipher?: number,
  ): void;
  /**
   * SEND_UPDATE_DATA straight into a frame: guest page gfns[i] is
   * decrypted under the memory cipher (as viewMacs) and sealed (as gcmSealPages, seq = firstSeq + i) into frame
   * at offset + i * 4112; with macKey, the view MAC of each plaintext into
   * macs at i * 16 (at gfn * 16 with macsByGfn: a per-guest table) in the
   * same pass.
   */
  sealPagesToFrame(
    memoryKey: Uint8Array,
    gcmKey: Uint8Array,
    memory: Uint8Array,
    gfns: Float64Array,
    firstSeq: number,
    frame: Uint8Array,
    offset: number,
    macKey?: Uint8Array,
    macs?: Uint8Array,
    macsByGfn?: boolean,
    cipher?: number,
  ): void;
  /**
   * RECEIVE_UPDATE_DATA straight into guest memory (each page encrypted
   * under the memory cipher, as viewMacs); returns the index of the
   * first page that fails to verify (it and those after it are not written),
   * or -1.
   */
  openFrameToPages(
    gcmKey: Uint8Array,
    memoryKey: Uint8Array,
    frame: Uint8Array,
    offset: number,
    gfns: Float64Array,
    firstSeq: number,
    memory: Uint8Array,
    macKey?: Uint8Array,
    macs?: Uint8Array,
    macsByGfn?: boolean,
    cipher?: number,
  ): number;
  /** Raw copy of guest pages gfns[i] into frame at offset + i * 4096, view MACs optional. */
  copyPagesToFrame(
    memory: Uint8Array,
    gfns: Float64Array,
    frame: Uint8Array,
    offset: number,
    macKey?: Uint8Array,
    macs?: Uint8Array,
    macsByGfn?: boolean,
  ): void;
  /** Raw copy of frame pages (offset + i * 4096) into guest pages gfns[i], view MACs optional. */
  copyFrameToPages(
    frame: Uint8Array,
    offset: number,
    memory: Uint8Array,
    gfns: Float64Array,
    macKey?: Uint8Array,
    macs?: Uint8Array,
    macsByGfn?: boolean,
  ): void;
  /**
   * The limit of a migration's per-page work: source and destination steps of
   * an encrypted (XTS, GCM seal, GCM open, XTS) or shared (two copies) page,
   * each side hashing the plaintext with `hash`, in a tight loop on `threads`
   * native threads over pre-faulted buffers. Returns pages/s of all threads.
   */
  pipelineLimit(
    encrypted: boolean,
    hash: 'sha256' | 'mac' | 'none',
    pagesPerThread: number,
    passes: number,
    threads: number,
  ): number;
  /**
   * The same per-page work split as a migration splits it: a source thread
   * fills frames of 256 pages from its `pages`-page memory into a ring of
   * `slots` frames, a destination thread empties them into its own, `passes`
   * times over. Returns pages/s: what a two-thread engine could reach with
   * no cost of its own around each frame.
   */
  pipelineHandoff(
    encrypted: boolean,
    hash: 'sha256' | 'mac' | 'none',
    pages: number,
    passes: number,
    slots: number,
  ): number;
}

/** What the PSP driver reports (read only). */
export interface SevPlatformStatus {
  present: boolean;
  ok: boolean;
  error?: string;
  apiMajor?: number;
  apiMinor?: number;
  state?: 'UNINIT' | 'INIT' | 'WORKING' | 'unknown';
  build?: number;
  guestCount?: number;
  flags?: number;
}

/** The configuration of a native KvmVm. */
export interface KvmVmConfig {
  /** RAM slot size in 4 KiB pages: a multiple of 64 in [kvmLayout().minRamPages, maxRamPages]. */
  ramPages: number;
  vcpus: number;
  /** 0: the CPL0 profile; 3: CPL3 with IOPL=3. */
  cpl: 0 | 3;
  /** Use KVM_CLEAR_DIRTY_LOG with manual protect where the host offers it. */
  manualProtect: boolean;
  /** Enable KVM_CAP_EXIT_HYPERCALL and answer KVM_EXIT_HYPERCALL (the guest uses vmcall). */
  vmcall: boolean;
  /** The VM's 16-byte memory-encryption key, placed in the firmware slot. */
  key: Uint8Array;
  /** A vCPU without exits or progress for this long is reported stalled. */
  stallMs: number;
  /** Called (coalesced) when records are queued; call drain() to take them. */
  onRecords: () => void;
}

/** Status of one vCPU thread. */
export interface KvmVcpuStatus {
  parked: boolean;
  failed: boolean;
  exits: number;
  kicks: number;
}

/**
 * The records of every vCPU: 8 words each (kind, vcpu, seq, nr, a0, a1, a2,
 * ret), each vCPU's in the order it produced them; `messages` holds one line
 * per fatal record (kind 2), in order.
 */
export interface KvmDrain {
  records: BigUint64Array;
  messages: string[];
}

export interface KvmVmNative {
  /** Guest RAM (the slot's own mapping, no copy). */
  ram(): ArrayBuffer;
  info(): { manualProtect: boolean; syncRegs: boolean };
  resume(): void;
  /** Parks every vCPU at a clean point; throws if one does not park within timeoutMs. */
  pause(timeoutMs: number): void;
  close(): void;
  drain(): KvmDrain;
  /** ORs the dirty pages since the last harvest into out and clears them in KVM; returns their number. */
  harvestDirty(out: Uint32Array): number;
  saveVcpuState(vcpu: number): Uint8Array;
  loadVcpuState(vcpu: number, state: Uint8Array): void;
  status(): KvmVcpuStatus[];
}

export interface KvmProbeRun {
  ok: boolean;
  detail: string;
}

export interface KvmProbeResult {
  available: boolean;
  /** Why /dev/kvm cannot be used, when !available. */
  reason: string;
  apiVersion: number;
  caps: Record<string, number>;
  /** A vCPU in long mode at CPL0 / CPL3 ran the port-I/O shim and got its result in RAX. */
  cpl0: KvmProbeRun;
  cpl3: KvmProbeRun;
  /** vmcall reached userspace as KVM_EXIT_HYPERCALL. */
  vmcall: KvmProbeRun;
}

export interface KvmLayout {
  magic: number;
  version: number;
  controlGpa: number;
  cbitTableGpa: number;
  codeGpa: number;
  codeMax: number;
  dataGpa: number;
  maxVcpus: number;
  minRamPages: number;
  maxRamPages: number;
  offVersion: number;
  offVcpus: number;
  offRamPages: number;
  offWorkload: number;
  offShimMode: number;
  offSeed: number;
  offStride: number;
  offIteration: number;
  offStop: number;
  offCpuidFeatures: number;
  offOpsPerMs: number;
  offVcpu: number;
  vcpuCountersSize: number;
  offProgress: number;
  offWrites: number;
  offConversions: number;
  offRejected: number;
  offLastRet: number;
  offPass: number;
}

const here = fileURLToPath(new URL('.', import.meta.url));
/**
 * Relative to src/common or dist/common (two levels below the root), or to
 * build/bench/src/common, where `npm run bench` compiles the benchmarks.
 */
const CANDIDATES = [
  '../../build/Release/sevtrack_native.node',
  '../../build/Debug/sevtrack_native.node',
  '../../../../build/Release/sevtrack_native.node',
];

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
