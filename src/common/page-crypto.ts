/**
 * Page-granular crypto for the SEV model, batched in the native addon on
 * Node's own OpenSSL (a node:crypto cipher object per 4 KiB page costs more
 * than the AES itself; see bench group `crypto`).
 *
 * - Memory encryption, per backend (MemoryCodec): the sim backend's
 *   AES-128-XTS, one data unit per page, tweak = the GPA (docs/design.md §4),
 *   so the same plaintext at two addresses differs; the kvm backend's
 *   keystream, every 64-bit word XOR a keyed mixer of its GPA (docs/kvm.md).
 *   The pipeline functions take either; only their per-page decrypt or
 *   encrypt step differs.
 * - PSP transport sealing: AES-256-GCM, nonce from the stream sequence number,
 *   GPA and sequence as associated data, so a page replayed at another GPA or
 *   position fails to open.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';
import { nativeAddon } from './native.js';
import { PAGE_SIZE } from './ranges.js';

export const SEALED_PAGE_BYTES = PAGE_SIZE + 16;

/** The memory-encryption models: `xts` (sim backend), `keystream` (kvm backend). */
export const MEMORY_CIPHERS = ['xts', 'keystream'] as const;
export type MemoryCipher = (typeof MEMORY_CIPHERS)[number];

/** A guest memory's encryption model and key (32 bytes for xts, 16 for keystream). */
export interface MemoryCodec {
  cipher: MemoryCipher;
  key: Uint8Array;
}

/** A memory key: a bare key is AES-XTS (the sim backend's model), else the codec names its cipher. */
export type MemoryKey = Uint8Array | MemoryCodec;

/** The native numbering of the cipher (pipeline_binding.cc CipherArg) and the key bytes. */
function nativeKey(k: MemoryKey): { key: Uint8Array; cipher: number } {
  if (k instanceof Uint8Array) return { key: k, cipher: 0 };
  return { key: k.key, cipher: MEMORY_CIPHERS.indexOf(k.cipher) };
}

/** A fresh AES-128-XTS key (32 bytes with two different halves). */
export function newMemoryKey(): Uint8Array {
  for (;;) {
    const key = randomBytes(32);
    if (!key.subarray(0, 16).equals(key.subarray(16))) return new Uint8Array(key);
  }
}

function checkPages(what: string, buf: Uint8Array, npages: number, unit = PAGE_SIZE): void {
  if (buf.byteLength < npages * unit) {
    throw new InvalidArgumentError(
      what,
      `${what} holds ${buf.byteLength} bytes; ${npages} pages need ${npages * unit}`,
    );
  }
}

/** AES-XTS over npages pages of src into dst (may alias), one data unit per page, tweak = its GPA. */
function xtsPages(
  encrypt: boolean,
  key: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  firstGpa: number,
  npages: number,
): void {
  checkPages('src', src, npages);
  checkPages('dst', dst, npages);
  nativeAddon().xtsPages(key, encrypt, src, dst, firstGpa, npages);
}

/** Encrypts npages pages of src into dst (may alias) as the guest's memory controller would at firstGpa. */
export function xtsEncryptPages(
  key: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  firstGpa: number,
  npages: number,
): void {
  xtsPages(true, key, src, dst, firstGpa, npages);
}

/** Decrypts npages pages of src (at firstGpa) into dst (may alias), as a guest read does. */
export function xtsDecryptPages(
  key: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  firstGpa: number,
  npages: number,
): void {
  xtsPages(false, key, src, dst, firstGpa, npages);
}

/** Seals gpas.length plaintext pages of src into dst (4112 bytes each), sequence numbers from firstSeq. */
export function sealPages(
  key: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  gpas: Float64Array,
  firstSeq: number,
): void {
  checkPages('src', src, gpas.length);
  checkPages('dst', dst, gpas.length, SEALED_PAGE_BYTES);
  nativeAddon().gcmSealPages(key, src, dst, gpas, firstSeq);
}

/** Opens sealed pages; returns the index of the first that fails authentication, or -1. */
export function openPages(
  key: Uint8Array,
  src: Uint8Array,
  dst: Uint8Array,
  gpas: Float64Array,
  firstSeq: number,
): number {
  checkPages('src', src, gpas.length, SEALED_PAGE_BYTES);
  checkPages('dst', dst, gpas.length);
  return nativeAddon().gcmOpenPages(key, src, dst, gpas, firstSeq);
}

/** Decrypts (or copies through XTS) memory pages gfns[i] into out at i * 4096. */
export function xtsGather(
  key: Uint8Array,
  encrypt: boolean,
  memory: Uint8Array,
  out: Uint8Array,
  gfns: Float64Array,
): void {
  checkPages('out', out, gfns.length);
  nativeAddon().xtsGather(key, encrypt, memory, out, gfns);
}

/** Encrypts (or decrypts) src page i into memory page gfns[i]. */
export function xtsScatter(
  key: Uint8Array,
  encrypt: boolean,
  src: Uint8Array,
  memory: Uint8Array,
  gfns: Float64Array,
): void {
  checkPages('src', src, gfns.length);
  nativeAddon().xtsScatter(key, encrypt, src, memory, gfns);
}

export const DIGEST_BYTES = 32;

/**
 * SHA-256 of the guest's view of every page in (firstGfn, npages): what the
 * guest reads under its c-bit table `cbits`. 32 bytes a page, in order.
 */
export function viewDigests(
  key: Uint8Array,
  memory: Uint8Array,
  cbits: Uint32Array,
  firstGfn: number,
  npages: number,
): Uint8Array {
  const out = new Uint8Array(npages * DIGEST_BYTES);
  nativeAddon().viewDigests(key, memory, cbits, firstGfn, npages, out);
  return out;
}

/**
 * The view MAC, 16 bytes a page: GMAC (AES-128-GCM, the page as associated
 * data, nonce = its GPA) under a 16-byte key both sides share. The cheap
 * verification digest (docs/design.md §4): about 3x cheaper than SHA-256 on
 * the development machines. Every difference confined to one 16-byte block,
 * so every single-bit difference, always changes it; two different pages
 * collide with probability at most 257 / 2^128 (< 2^-119) for a key chosen
 * independently of them, so at most 2^-91 over a 1 TiB guest.
 */
export const VIEW_MAC_BYTES = 16;

/**
 * Where a pipeline call also writes the view MAC of each page it moves: the
 * key, and the output: page i of the batch at i * 16, or with `byGfn` page
 * gfn at gfn * 16 (a per-guest table of memory pages * 16 bytes).
 */
export interface MacOutput {
  key: Uint8Array;
  out: Uint8Array;
  byGfn?: boolean;
}

function checkFrame(frame: Uint8Array, offset: number, npages: number, unit: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + npages * unit > frame.byteLength) {
    throw new InvalidArgumentError(
      'offset',
      `frame holds ${frame.byteLength} bytes; offset ${offset} + ${npages} pages of ${unit} bytes do not fit`,
    );
  }
}

/**
 * View MACs of the guest view of pages (firstGfn, npages) under c-bit table
 * `cbits` (pages with the bit decrypted under `memoryKey`), 16 bytes a page.
 */
export function viewMacs(
  memoryKey: MemoryKey,
  macKey: Uint8Array,
  memory: Uint8Array,
  cbits: Uint32Array,
  firstGfn: number,
  npages: number,
  out: Uint8Array = new Uint8Array(npages * VIEW_MAC_BYTES),
): Uint8Array {
  const m = nativeKey(memoryKey);
  nativeAddon().viewMacs(m.key, macKey, memory, cbits, firstGfn, npages, out, m.cipher);
  return out;
}

/**
 * SEND_UPDATE_DATA straight into a frame: guest pages gfns[i] decrypted under
 * memoryKey and sealed with gcmKey (sequence firstSeq + i) into frame at
 * offset + i * 4112; no intermediate buffer. With `macs`, the view MAC of
 * each page's plaintext in the same pass.
 */
export function sealPagesToFrame(
  memoryKey: MemoryKey,
  gcmKey: Uint8Array,
  memory: Uint8Array,
  gfns: Float64Array,
  firstSeq: number,
  frame: Uint8Array,
  offset: number,
  macs?: MacOutput,
): void {
  checkFrame(frame, offset, gfns.length, SEALED_PAGE_BYTES);
  const m = nativeKey(memoryKey);
  nativeAddon().sealPagesToFrame(
    m.key,
    gcmKey,
    memory,
    gfns,
    firstSeq,
    frame,
    offset,
    macs?.key,
    macs?.out,
    macs?.byGfn,
    m.cipher,
  );
}

/**
 * RECEIVE_UPDATE_DATA straight into guest memory: opens frame pages at
 * offset + i * 4112 and encrypts each under memoryKey into page gfns[i]. Returns
 * the index of the first page that fails authentication (it and those after
 * it are not written, those before it are: the caller discards the guest),
 * or -1. With `macs`, the view MAC of each plaintext in the same pass.
 */
export function openFrameToPages(
  gcmKey: Uint8Array,
  memoryKey: MemoryKey,
  frame: Uint8Array,
  offset: number,
  gfns: Float64Array,
  firstSeq: number,
  memory: Uint8Array,
  macs?: MacOutput,
): number {
  checkFrame(frame, offset, gfns.length, SEALED_PAGE_BYTES);
  const m = nativeKey(memoryKey);
  return nativeAddon().openFrameToPages(
    gcmKey,
    m.key,
    frame,
    offset,
    gfns,
    firstSeq,
    memory,
    macs?.key,
    macs?.out,
    macs?.byGfn,
    m.cipher,
  );
}

/** Copies guest pages gfns[i] raw into frame at offset + i * 4096 (shared pages), view MACs optional. */
export function copyPagesToFrame(
  memory: Uint8Array,
  gfns: Float64Array,
  frame: Uint8Array,
  offset: number,
  macs?: MacOutput,
): void {
  checkFrame(frame, offset, gfns.length, PAGE_SIZE);
  nativeAddon().copyPagesToFrame(memory, gfns, frame, offset, macs?.key, macs?.out, macs?.byGfn);
}

/** Copies frame pages (offset + i * 4096) raw into guest pages gfns[i], view MACs optional. */
export function copyFrameToPages(
  frame: Uint8Array,
  offset: number,
  memory: Uint8Array,
  gfns: Float64Array,
  macs?: MacOutput,
): void {
  checkFrame(frame, offset, gfns.length, PAGE_SIZE);
  nativeAddon().copyFrameToPages(frame, offset, memory, gfns, macs?.key, macs?.out, macs?.byGfn);
}
