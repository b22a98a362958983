/**
 * The guest kernel's own area of guest memory: its c-bit table (one bit per
 * page, 1 = encrypted, as the c-bit in a real guest's page-table entries)
 * and a heartbeat counter. It lives in the first pages of guest memory,
 * which the guest keeps private (encrypted) for its whole life, exactly as a
 * real guest's page tables are; so it travels with the pages, sealed through
 * the PSP, and is never handed across out of band (docs/design.md, "the guest
 * runs on after resume").
 *
 * Layout (little-endian), from byte 0 of gfn `root` (the page-table root the
 * vCPU state carries, as CR3 does):
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 4 | magic `SVKT` (0x544b5653) |
 * | 4 | 2 | version 1 |
 * | 6 | 2 | reserved 0 |
 * | 8 | 8 | heartbeat: vCPU 0 adds 1 after every step of its workload |
 * | 16 | 8 | npages: the guest's size the table covers |
 * | 24 | 40 | reserved 0 |
 * | 64 | ceil(npages / 8) | the c-bit table, bit g of byte g/8 = page g |
 *
 * The area spans kernelPages(npages) pages; workloads never touch it.
 */
import { FormatError } from '../common/errors.js';
import { PAGE_SIZE } from '../common/ranges.js';

export const KERNEL_AREA_MAGIC = 0x544b_5653; // "SVKT"
export const KERNEL_AREA_VERSION = 1;
/** Where the kernel area starts in this guest (gfn). */
export const KERNEL_ROOT_GFN = 0;
const HEADER_BYTES = 64;
const HEARTBEAT_OFFSET = 8;
const NPAGES_OFFSET = 16;

/** Pages the kernel area of an npages guest spans (1 up to 32,256 pages, then one per 32,768 more). */
export function kernelPages(npages: number): number {
  return Math.ceil((HEADER_BYTES + Math.ceil(npages / 8)) / PAGE_SIZE);
}

/** Byte position of page gfn's bit inside the area: (page of the area, byte in that page, bit). */
export function tableBitAt(gfn: number): { page: number; byte: number; bit: number } {
  const at = HEADER_BYTES + Math.floor(gfn / 8);
  return { page: Math.floor(at / PAGE_SIZE), byte: at % PAGE_SIZE, bit: gfn & 7 };
}

/** Writes the header into the (plaintext) first page of the area. */
export function writeHeader(page: Uint8Array, npages: number): void {
  const v = new DataView(page.buffer, page.byteOffset, page.byteLength);
  page.fill(0, 0, HEADER_BYTES);
  v.setUint32(0, KERNEL_AREA_MAGIC, true);
  v.setUint16(4, KERNEL_AREA_VERSION, true);
  v.setBigUint64(NPAGES_OFFSET, BigInt(npages), true);
}

/**
 * Checks the header of the area's first page (plaintext, as the guest reads
 * it) for an npages guest; throws a FormatError naming what it expected.
 */
export function checkHeader(page: Uint8Array, npages: number): void {
  const v = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const magic = v.getUint32(0, true);
  if (magic !== KERNEL_AREA_MAGIC)
    throw new FormatError(
      'guest c-bit table',
      0,
      `magic 0x${KERNEL_AREA_MAGIC.toString(16)} (SVKT)`,
      `0x${magic.toString(16)} (the table did not arrive intact, or the guest never booted its kernel)`,
    );
  const version = v.getUint16(4, true);
  if (version !== KERNEL_AREA_VERSION)
    throw new FormatError('guest c-bit table', 4, `version ${KERNEL_AREA_VERSION}`, `${version}`);
  const n = Number(v.getBigUint64(NPAGES_OFFSET, true));
  if (n !== npages) throw new FormatError('guest c-bit table', NPAGES_OFFSET, `${npages} pages`, `${n}`);
}

/** The heartbeat counter in the (plaintext) first page of the area. */
export function readHeartbeat(page: Uint8Array): bigint {
  return new DataView(page.buffer, page.byteOffset, page.byteLength).getBigUint64(HEARTBEAT_OFFSET, true);
}

export function addHeartbeat(page: Uint8Array): void {
  const v = new DataView(page.buffer, page.byteOffset, page.byteLength);
  v.setBigUint64(HEARTBEAT_OFFSET, v.getBigUint64(HEARTBEAT_OFFSET, true) + 1n, true);
}

/**
 * Copies the table bits out of the area's plaintext pages (`pages`, the
 * whole area in order) into `words` (a page bitmap's u32 words, bit g = page g).
 */
export function tableToWords(pages: Uint8Array, npages: number, words: Uint32Array): void {
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  const n = Math.ceil(npages / 8);
  bytes.fill(0);
  bytes.set(pages.subarray(HEADER_BYTES, HEADER_BYTES + n));
  // Bits past the guest's end stay clear.
  const tail = npages & 7;
  if (tail !== 0) bytes[n - 1] &= (1 << tail) - 1;
}

/** Writes `words` (bit g = page g) into the area's plaintext pages, leaving the header alone. */
export function wordsToTable(words: Uint32Array, npages: number, pages: Uint8Array): void {
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  pages.set(bytes.subarray(0, Math.ceil(npages / 8)), HEADER_BYTES);
}

/** The gfns [first, end) whose table bits live in area page `areaPage` of an npages guest. */
export function areaPageGfns(areaPage: number, npages: number): { first: number; end: number } {
  const bitsBefore = areaPage * PAGE_SIZE * 8 - HEADER_BYTES * 8;
  return {
    first: Math.max(0, bitsBefore),
    end: Math.min(npages, bitsBefore + PAGE_SIZE * 8),
  };
}

/**
 * Sets or clears the table bits of (gfn, npages) that fall inside area page
 * `areaPage` of the plaintext `page`; returns whether any did.
 */
export function setTableBits(
  page: Uint8Array,
  areaPage: number,
  gfn: number,
  npages: number,
  encrypted: boolean,
): boolean {
  const span = areaPageGfns(areaPage, gfn + npages);
  const first = Math.max(gfn, span.first);
  const end = span.end;
  for (let g = first; g < end; g++) {
    const at = tableBitAt(g);
    if (encrypted) page[at.byte] |= 1 << at.bit;
    else page[at.byte] &= ~(1 << at.bit);
  }
  return end > first;
}
