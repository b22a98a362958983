/**
 * The SEV memory model (docs/design.md §4) for the simulated backend.
 *
 * Guest memory is a SharedArrayBuffer the host reads raw. The guest's
 * c-bits have one source of truth: the guest kernel's c-bit table, which
 * lives IN guest memory, private (src/guest/kernel-area.ts), and so travels
 * with the pages. `cbits` (1 = encrypted/private) is the vCPUs' TLB: the
 * cached c-bit of every page, from which the model takes each access's
 * c-bit as a CPU takes it from its TLB. The kernel updates its table first
 * and then flushes the TLB for the range (setCbits), so at every clean point
 * (a pause) the two agree; a destination that received the pages refills the
 * TLB from the migrated table (loadPageTables), never from anything sent out
 * of band. One TLB serves all vCPUs: the converting vCPU's flush is the
 * shootdown, done before its notification returns. A guest write to a page whose c-bit is set stores
 * AES-XTS(VM key, tweak = GPA) of the data; a write to a shared page stores it
 * as is. Reads decrypt according to the guest's c-bit. Every write sets the
 * page's bit in the dirty log AFTER the data is stored, so a harvest that
 * races with a write either reports it or leaves it for the next harvest.
 *
 * Every piece lives in shared memory so vCPU worker threads attach to the same
 * guest with GuestMemory.attach(descriptor).
 */
import { InvalidArgumentError } from '../../common/errors.js';
import { nativeAddon } from '../../common/native.js';
import { PageBitmap } from '../../common/page-bitmap.js';
import {
  type MemoryCodec,
  newMemoryKey,
  xtsDecryptPages,
  xtsEncryptPages,
} from '../../common/page-crypto.js';
import { PAGE_SIZE } from '../../common/ranges.js';
import { checkHeader, kernelPages, tableToWords } from '../../guest/kernel-area.js';
import type { MigratableMemory } from '../backend.js';
import { decodeVcpuState } from './vcpu-state.js';

/** Pages made resident per step of makeResident (8 MiB: a few ms). */
const RESIDENT_STEP_PAGES = 2048;

/** Lock words for guest page read-modify-writes (striped by gfn). */
const PAGE_LOCKS = 64;

/** What a worker thread needs to attach to the same guest memory. */
export interface GuestMemoryDescriptor {
  npages: number;
  memory: SharedArrayBuffer;
  cbits: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  written: SharedArrayBuffer;
  locks: SharedArrayBuffer;
  key: Uint8Array;
}

export class GuestMemory implements MigratableMemory {
  readonly backend = 'sim';
  readonly npages: number;
  /** The raw bytes the host sees. */
  readonly bytes: Uint8Array;
  /** The guest's own c-bit per page (1 = encrypted). */
  readonly cbits: PageBitmap;
  /** The dirty log: set after every guest write, harvested by the host. */
  readonly dirty: PageBitmap;
  /**
   * Set when the guest writes a page, cleared when it converts it: the pages
   * whose content is defined (verification mode `defined`, docs/design.md §3).
   */
  readonly written: PageBitmap;
  /** The VM's memory encryption key (never leaves the "hardware" but for the PSP model). */
  readonly key: Uint8Array;
  /** AES-XTS under `key` (docs/design.md §4). */
  readonly codec: MemoryCodec;
  /**
   * The guest's page-table lock words (updatePage). A lock is held only
   * inside one guest operation, never at a clean point, so it is always
   * free when the guest is paused and needs no migration.
   */
  private readonly locks: Int32Array;

  private constructor(d: GuestMemoryDescriptor) {
    this.npages = d.npages;
    this.bytes = new Uint8Array(d.memory);
    this.cbits = new PageBitmap(d.npages, { buffer: d.cbits });
    this.dirty = new PageBitmap(d.npages, { buffer: d.dirty });
    this.written = new PageBitmap(d.npages, { buffer: d.written });
    this.key = d.key;
    this.codec = { cipher: 'xts', key: d.key };
    this.locks = new Int32Array(d.locks);
  }

  /** Harvests (and clears) the dirty log into `out` (MigratableMemory). */
  harvestDirty(out: PageBitmap): number {
    return this.dirty.harvestInto(out);
  }

  dirtyCount(): number {
    return this.dirty.count();
  }

  /** Shared memory only: the garbage collector frees it. */
  close(): void {}

  clearCbits(): void {
    this.cbits.clearRange(0, this.npages);
  }

  /**
   * The vCPU state (one page per vCPU, vcpu-state.ts) names the page-table
   * root; the TLB is filled from the table found there (loadPageTables).
   */
  restoreVcpuState(state: Uint8Array, vcpus: number): PageBitmap {
    const registers = decodeVcpuState(state, vcpus);
    return this.loadPageTables(registers[0].pageTableRoot);
  }

  /**
   * A new guest of npages pages (zeroed raw memory), every page encrypted in
   * the guest's page tables unless `encrypted` is false, with a fresh key.
   * `hugePages`: advise transparent huge pages, as a VMM backs guest RAM
   * (the CLI's and benchmarks' guests, source and destination; library
   * destinations without an allocator and tests' small guests stay at
   * 4 KiB): one fault per 2 MiB, and half the cost of a 4 KiB page to copy
   * into under shadow paging (native/memory_advice.cc).
   */
  static create(
    npages: number,
    options: { encrypted?: boolean; key?: Uint8Array; hugePages?: boolean } = {},
  ): GuestMemory {
    if (!Number.isInteger(npages) || npages < 1 || npages > 2 ** 28) {
      throw new InvalidArgumentError('npages', `guest size ${npages} pages must be from 1 to 2^28 (1 TiB)`);
    }
    const words = new PageBitmap(npages).words.byteLength;
    const memory = GuestMemory.allocateMemory(npages, options.hugePages ?? false);
    const mem = new GuestMemory({
      npages,
      memory,
      cbits: new SharedArrayBuffer(words),
      dirty: new SharedArrayBuffer(words),
      written: new SharedArrayBuffer(words),
      locks: new SharedArrayBuffer(PAGE_LOCKS * 4),
      key: options.key ?? newMemoryKey(),
    });
    if (options.encrypted ?? true) mem.cbits.setRange(0, npages);
    return mem;
  }

  /**
   * Makes every page resident now, writable, contents unchanged, as a VMM
   * preallocates guest RAM (and an SEV VMM pins it): a running guest's
   * memory at launch, a prepared destination's before its source connects
   * (one allocated at the HELLO is not: it faults as pages arrive). So a
   * migration's reads and writes meet mapped memory and take no first-touch
   * fault (native/memory_advice.cc). In steps of RESIDENT_STEP_PAGES,
   * yielding between them: 4 GiB takes seconds, and a cancel (`signal`)
   * ends it within a step (the memory is then abandoned, and goes with its
   * last reference). Throws InvalidArgumentError naming --memory when the
   * kernel cannot back the memory (ENOMEM), before touching it.
   */
  async makeResident(signal?: AbortSignal): Promise<void> {
    for (let first = 0; first < this.npages; first += RESIDENT_STEP_PAGES) {
      signal?.throwIfAborted();
      const end = Math.min(first + RESIDENT_STEP_PAGES, this.npages);
      const r = nativeAddon().prefaultMemory(this.bytes.subarray(first * PAGE_SIZE, end * PAGE_SIZE));
      if (r.touchedBytes === 0 && r.error !== null)
        throw new InvalidArgumentError(
          'memory',
          `cannot make ${this.npages * PAGE_SIZE} bytes of guest memory resident (${r.error}); choose a smaller --memory`,
        );
      await new Promise((r) => setImmediate(r));
    }
    signal?.throwIfAborted();
  }

  /**
   * The guest has moved on (a verified hop of a chain) and this copy is
   * dropped: its pages go back to the kernel now, so a chain in one process
   * holds two guests at a time rather than three until the old one is
   * collected. Reads see zeros afterwards; call it only once nothing runs
   * on or reads this memory (its vCPUs stopped).
   */
  release(): void {
    nativeAddon().releaseMemory(this.bytes);
  }

  private static allocateMemory(npages: number, hugePages: boolean): SharedArrayBuffer {
    try {
      const memory = new SharedArrayBuffer(npages * PAGE_SIZE);
      if (hugePages) nativeAddon().adviseHugePages(new Uint8Array(memory));
      return memory;
    } catch (err) {
      throw new InvalidArgumentError(
        'memory',
        `cannot allocate ${npages * PAGE_SIZE} bytes of guest memory (${(err as Error).message}); choose a smaller --memory`,
      );
    }
  }

  /** Attaches to a guest created elsewhere (in another thread). */
  static attach(d: GuestMemoryDescriptor): GuestMemory {
    return new GuestMemory(d);
  }

  descriptor(): GuestMemoryDescriptor {
    return {
      npages: this.npages,
      memory: this.bytes.buffer as SharedArrayBuffer,
      cbits: this.cbits.buffer as SharedArrayBuffer,
      dirty: this.dirty.buffer as SharedArrayBuffer,
      written: this.written.buffer as SharedArrayBuffer,
      locks: this.locks.buffer as SharedArrayBuffer,
      key: this.key,
    };
  }

  private checkGfn(gfn: number): void {
    if (!Number.isInteger(gfn) || gfn < 0 || gfn >= this.npages) {
      throw new InvalidArgumentError('gfn', `gfn ${gfn} is outside guest memory (${this.npages} pages)`);
    }
  }

  /** The raw (host-visible) bytes of one page: a view, not a copy. */
  hostView(gfn: number): Uint8Array {
    this.checkGfn(gfn);
    return this.bytes.subarray(gfn * PAGE_SIZE, (gfn + 1) * PAGE_SIZE);
  }

  /** Whether the guest's TLB maps gfn encrypted (the c-bit the next access uses). */
  isEncrypted(gfn: number): boolean {
    return this.cbits.test(gfn);
  }

  /**
   * A guest write of a whole page: encrypted under the guest's c-bit, then
   * the dirty bit is set (after the store, so a racing harvest cannot lose it).
   */
  writePage(gfn: number, data: Uint8Array): void {
    this.checkGfn(gfn);
    if (data.byteLength !== PAGE_SIZE)
      throw new InvalidArgumentError('data', `a page write takes ${PAGE_SIZE} bytes, got ${data.byteLength}`);
    const raw = this.hostView(gfn);
    if (this.cbits.test(gfn)) xtsEncryptPages(this.key, data, raw, gfn * PAGE_SIZE, 1);
    else raw.set(data);
    this.written.markAtomic(gfn);
    this.dirty.markAtomic(gfn);
  }

  /** A guest read of a whole page into out (decrypted under the guest's c-bit). */
  readPage(gfn: number, out: Uint8Array = new Uint8Array(PAGE_SIZE)): Uint8Array {
    this.checkGfn(gfn);
    this.readPageAs(gfn, this.cbits.test(gfn), out);
    return out;
  }

  /** Reads a page as if the guest's c-bit were `encrypted` (to show what a wrong perspective yields). */
  readPageAs(gfn: number, encrypted: boolean, out: Uint8Array = new Uint8Array(PAGE_SIZE)): Uint8Array {
    this.checkGfn(gfn);
    const raw = this.hostView(gfn);
    if (encrypted) xtsDecryptPages(this.key, raw, out, gfn * PAGE_SIZE, 1);
    else out.set(raw);
    return out;
  }

  /**
   * Changes the guest page tables' c-bit for (gfn, npages) (the guest side of
   * set_memory_encrypted/decrypted). The data is not converted: under the new
   * bit the old content reads as garbage, exactly as on SEV, and the pages
   * count as undefined until rewritten.
   */
  setCbits(gfn: number, npages: number, encrypted: boolean): void {
    // Atomic: other vCPUs convert and write neighbouring pages concurrently.
    if (encrypted) this.cbits.setRangeAtomic(gfn, npages);
    else this.cbits.clearRangeAtomic(gfn, npages);
    this.written.clearRangeAtomic(gfn, npages);
  }

  /**
   * A locked read-modify-write of one guest page under its c-bit (the
   * guest's page-table lock): no other updatePage of a page sharing the
   * lock word runs between the read and the write.
   */
  updatePage(gfn: number, update: (plain: Uint8Array) => void): void {
    this.locked(gfn, () => {
      const page = this.readPage(gfn);
      update(page);
      this.writePage(gfn, page);
    });
  }

  /** A guest read of one page that no updatePage tears (an observer's view of a kernel page). */
  readPageLocked(gfn: number): Uint8Array {
    return this.locked(gfn, () => this.readPage(gfn));
  }

  private locked<T>(gfn: number, fn: () => T): T {
    const lock = gfn % PAGE_LOCKS;
    while (Atomics.compareExchange(this.locks, lock, 0, 1) !== 0) Atomics.wait(this.locks, lock, 1, 1);
    try {
      return fn();
    } finally {
      Atomics.store(this.locks, lock, 0);
      Atomics.notify(this.locks, lock, 1);
    }
  }

  /**
   * The guest's c-bit table as it stands in guest memory at `root` (the
   * page-table root from the vCPU state), decrypted as the private pages it
   * is. Throws a FormatError when the header is not there.
   */
  readPageTables(root: number): PageBitmap {
    const k = kernelPages(this.npages);
    if (!Number.isInteger(root) || root < 0 || root + k > this.npages)
      throw new InvalidArgumentError(
        'root',
        `page-table root gfn ${root} (+${k} pages) is outside guest memory (${this.npages} pages)`,
      );
    const pages = new Uint8Array(k * PAGE_SIZE);
    for (let i = 0; i < k; i++)
      this.readPageAs(root + i, true, pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    checkHeader(pages, this.npages);
    const table = new PageBitmap(this.npages);
    tableToWords(pages, this.npages, table.words);
    return table;
  }

  /**
   * Fills the TLB from the guest's table in memory (a destination after
   * every page arrived, before the guest runs): the guest's c-bits come
   * from the pages that migrated, nothing else. Returns the table.
   */
  loadPageTables(root: number): PageBitmap {
    const table = this.readPageTables(root);
    this.cbits.words.set(table.words);
    return table;
  }
}
