/**
 * The migration stream (docs/migration-stream.md): frames with magic "SVMG",
 * version 2 (16-byte view MACs in DIGESTS), and these messages. Every reader checks lengths and names the
 * field and offset of the first problem.
 */
import { BinaryReader, BinaryWriter, setU64n } from '../common/binary.js';
import { FormatError } from '../common/errors.js';
import type { FrameSpec } from '../common/frames.js';
import { bitmapWordCount } from '../common/page-bitmap.js';
import { SEALED_PAGE_BYTES, VIEW_MAC_BYTES } from '../common/page-crypto.js';
import { PAGE_SIZE } from '../common/ranges.js';
import { BACKENDS, type BackendName } from '../vmm/backend.js';

export const MIGRATION_FRAME: FrameSpec = {
  what: 'migration stream frame',
  magic: 0x474d_5653, // "SVMG"
  version: 2,
  maxPayload: 64 * 2 ** 20,
};

export const Msg = {
  HELLO: 1,
  HELLO_ACK: 2,
  PAGES_SEALED: 3,
  PAGES_RAW: 4,
  ROUND_END: 5,
  /** Retired: the guest's c-bit table travels in its own memory (src/guest/kernel-area.ts). */
  GUEST_PAGE_TABLES: 6,
  CBIT_STATE: 7,
  MIGRATION_CONTROL: 8,
  VMSA: 9,
  DIGESTS: 10,
  RESULT: 11,
  ABORT: 12,
  ROUND_ACK: 13,
} as const;

export const PROTOCOLS = ['safe', 'no-cbit-dirty', 'cbit-first', 'no-final-diff', 'naive'] as const;
export type Protocol = (typeof PROTOCOLS)[number];
export const VERIFY_MODES = ['strict', 'defined'] as const;
export type VerifyMode = (typeof VERIFY_MODES)[number];

export interface Hello {
  npages: number;
  vcpus: number;
  /** The source guest's backend, so its memory model (BACKENDS order); absent = sim, byte 0 as older sources sent. */
  backend?: BackendName;
  protocol: Protocol;
  verify: VerifyMode;
  generation: number;
  publicKey: Uint8Array;
}

export function encodeHello(h: Hello): Uint8Array {
  return new BinaryWriter()
    .u64(h.npages)
    .u32(h.vcpus)
    .u8(PROTOCOLS.indexOf(h.protocol))
    .u8(VERIFY_MODES.indexOf(h.verify))
    .u8(BACKENDS.indexOf(h.backend ?? 'sim'))
    .u8(0)
    .u32(h.generation)
    .u32(0)
    .bytes(h.publicKey)
    .finish();
}

export function decodeHello(payload: Buffer): Hello {
  const r = new BinaryReader(payload, 'HELLO');
  const npages = r.u64n('npages');
  const vcpus = r.u32('vcpus');
  const p = r.u8('protocol');
  const v = r.u8('verify');
  const b = r.u8('backend');
  if (b >= BACKENDS.length) throw new FormatError('HELLO', 14, `a backend below ${BACKENDS.length}`, `${b}`);
  const reserved = r.u8('reserved');
  if (reserved !== 0) throw new FormatError('HELLO', 15, 'reserved 0', `${reserved}`);
  const generation = r.u32('generation');
  r.zero32('reserved');
  const publicKey = new Uint8Array(r.bytes(32, 'public key'));
  r.end();
  if (p >= PROTOCOLS.length)
    throw new FormatError('HELLO', 12, `a protocol below ${PROTOCOLS.length}`, `${p}`);
  if (v >= VERIFY_MODES.length)
    throw new FormatError('HELLO', 13, `a verify mode below ${VERIFY_MODES.length}`, `${v}`);
  return {
    npages,
    vcpus,
    ...(b === 0 ? {} : { backend: BACKENDS[b] }), // absent: sim
    protocol: PROTOCOLS[p],
    verify: VERIFY_MODES[v],
    generation,
    publicKey,
  };
}

/** HELLO_ACK: status 0 with the destination's public key, or an error message. */
export function encodeHelloAck(publicKey: Uint8Array | undefined, error?: string): Uint8Array {
  const w = new BinaryWriter().u32(error ? 1 : 0);
  if (error) {
    const text = Buffer.from(error);
    return w.u32(text.length).bytes(text).finish();
  }
  return w.bytes(publicKey!).finish();
}

export function decodeHelloAck(payload: Buffer): { publicKey?: Uint8Array; error?: string } {
  const r = new BinaryReader(payload, 'HELLO_ACK');
  const status = r.u32('status');
  if (status > 1) throw new FormatError('HELLO_ACK', 0, 'status 0 (accepted) or 1 (refused)', `${status}`);
  if (status === 1) {
    const error = r.bytes(r.u32('length'), 'message').toString();
    r.end();
    return { error };
  }
  const publicKey = new Uint8Array(r.bytes(32, 'public key'));
  r.end();
  return { publicKey };
}

/** A batch of pages: sealed (PSP) when the source believed them encrypted, raw when shared. */
export interface PageBatch {
  round: number;
  gfns: Float64Array;
  /** First PSP sequence number (sealed batches). */
  firstSeq: number;
  data: Uint8Array;
}

export function encodePages(b: PageBatch): Uint8Array {
  const w = new BinaryWriter(24 + b.gfns.length * 8 + b.data.length)
    .u32(b.round)
    .u32(b.gfns.length)
    .u64(b.firstSeq);
  for (const g of b.gfns) w.u64(g);
  return w.bytes(b.data).finish();
}

/** Bytes of a PAGES frame for `count` pages before its page data. */
export function pagesHeaderBytes(count: number): number {
  return 16 + count * 8;
}

/** Bytes of a whole PAGES frame of `count` pages. */
export function pagesFrameBytes(count: number, sealed: boolean): number {
  return pagesHeaderBytes(count) + count * (sealed ? SEALED_PAGE_BYTES : PAGE_SIZE);
}

/**
 * Writes a PAGES header into `frame` (the page data goes at the returned
 * offset, written in place by the seal or copy); returns the data offset.
 */
export function writePagesHeader(
  frame: Uint8Array,
  round: number,
  gfns: Float64Array,
  firstSeq: number,
): number {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  view.setUint32(0, round, true);
  view.setUint32(4, gfns.length, true);
  setU64n(view, 8, firstSeq);
  for (let i = 0; i < gfns.length; i++) setU64n(view, 16 + i * 8, gfns[i]);
  return pagesHeaderBytes(gfns.length);
}

/** A PAGES frame's header; the page data stays in the payload at `dataOffset`. */
export interface PagesHeader {
  round: number;
  gfns: Float64Array;
  firstSeq: number;
  dataOffset: number;
}

/** Reads a PAGES header and checks that the payload holds exactly its page data (not copied). */
export function decodePagesHeader(payload: Buffer, sealed: boolean): PagesHeader {
  const what = sealed ? 'PAGES_SEALED' : 'PAGES_RAW';
  const r = new BinaryReader(payload, what);
  const round = r.u32('round');
  const count = r.u32('count');
  const firstSeq = r.u64n('first sequence');
  const gfns = r.u64ns(count, 'gfn');
  const dataOffset = pagesHeaderBytes(count);
  r.bytes(count * (sealed ? SEALED_PAGE_BYTES : PAGE_SIZE), 'page data'); // a view: checks the length
  r.end();
  return { round, gfns, firstSeq, dataOffset };
}

export function decodePages(payload: Buffer, sealed: boolean): PageBatch {
  const h = decodePagesHeader(payload, sealed);
  return {
    round: h.round,
    gfns: h.gfns,
    firstSeq: h.firstSeq,
    data: new Uint8Array(payload.subarray(h.dataOffset)),
  };
}

export interface Digests {
  /** The view MAC (16 bytes) of the source guest's view of every page at pause. */
  digests: Uint8Array;
  /** Pages written since their last conversion (verification mode `defined`). */
  defined: Uint32Array;
}

export function encodeDigests(d: Digests): Uint8Array {
  return new BinaryWriter(16 + d.digests.length + d.defined.byteLength)
    .u64(d.digests.length / VIEW_MAC_BYTES)
    .u32(d.defined.length)
    .u32(0)
    .bytes(d.digests)
    .bytes(new Uint8Array(d.defined.buffer, d.defined.byteOffset, d.defined.byteLength))
    .finish();
}

/**
 * A DIGESTS payload to be filled in place: the source's view-MAC table lives
 * in it from the start (the page sender writes each MAC there as it seals or
 * copies the page), so nothing of npages * 16 bytes is allocated, faulted in
 * or copied while the guest is paused; `defined` is filled at pause.
 */
export function digestsPayload(
  npages: number,
  definedWords: number,
): { payload: Uint8Array; digests: Uint8Array; defined: Uint32Array } {
  const macBytes = npages * VIEW_MAC_BYTES;
  const payload = new Uint8Array(16 + macBytes + definedWords * 4);
  const view = new DataView(payload.buffer);
  view.setBigUint64(0, BigInt(npages), true);
  view.setUint32(8, definedWords, true);
  return {
    payload,
    digests: payload.subarray(16, 16 + macBytes),
    defined: new Uint32Array(payload.buffer, 16 + macBytes, definedWords),
  };
}

/** Decodes DIGESTS; the MACs are a view into `payload` (not copied). */
export function decodeDigests(payload: Buffer, npages: number): Digests {
  const r = new BinaryReader(payload, 'DIGESTS');
  const n = r.u64n('page count');
  if (n !== npages) throw new FormatError('DIGESTS', 0, `${npages} pages`, `${n}`);
  const words = r.u32('bitmap words');
  // A short bitmap would silently drop pages from a `defined` verification.
  if (words !== bitmapWordCount(npages))
    throw new FormatError(
      'DIGESTS',
      8,
      `${bitmapWordCount(npages)} bitmap words for ${npages} pages`,
      `${words}`,
    );
  r.zero32('reserved');
  const macs = r.bytes(n * VIEW_MAC_BYTES, 'view MACs');
  const digests = new Uint8Array(macs.buffer, macs.byteOffset, macs.byteLength);
  const bytes = r.bytes(words * 4, 'defined bitmap');
  r.end();
  const defined = new Uint32Array(words);
  new Uint8Array(defined.buffer).set(bytes);
  return { digests, defined };
}

/**
 * The destination's verdict. `resumed`: no compared page differed, so the
 * destination resumed the guest; `verified`: that, and at least one page was
 * compared (a verdict over nothing is not a verification).
 */
export interface VerifyResult {
  resumed: boolean;
  verified: boolean;
  comparedPages: number;
  skippedPages: number;
  /** Why pages were skipped ('' when none were). */
  skipReason: string;
  mismatchedPages: number;
  /** Every mismatched gfn, ascending. */
  mismatchedGfns: number[];
  /**
   * The destination tracker's protocol errors (destination-tracker.ts):
   * pages written after their last conversion that last arrived from
   * another perspective than the final c-bit state's, ascending.
   */
  perspectiveMismatchGfns: number[];
  /** Pages whose final c-bit state differs from the guest's own table, ascending. */
  trackerMismatchGfns: number[];
  generationAfter: number;
  message: string;
}

export function encodeResult(r: VerifyResult): Uint8Array {
  const w = new BinaryWriter(48 + r.mismatchedGfns.length * 8)
    .u8(r.resumed ? 1 : 0)
    .u8(r.verified ? 1 : 0)
    .u16(0)
    .u32(r.generationAfter)
    .u64(r.comparedPages)
    .u64(r.skippedPages)
    .u64(r.mismatchedGfns.length);
  for (const g of r.mismatchedGfns) w.u64(g);
  const reason = Buffer.from(r.skipReason);
  const text = Buffer.from(r.message);
  w.u32(reason.length).bytes(reason).u32(text.length).bytes(text);
  for (const list of [r.perspectiveMismatchGfns, r.trackerMismatchGfns]) {
    w.u64(list.length);
    for (const g of list) w.u64(g);
  }
  return w.finish();
}

export function decodeResult(payload: Buffer): VerifyResult {
  const r = new BinaryReader(payload, 'RESULT');
  const resumed = r.flag('resumed');
  const verified = r.flag('verified');
  r.zero16('reserved');
  const generationAfter = r.u32('generation');
  const comparedPages = r.u64n('compared pages');
  const skippedPages = r.u64n('skipped pages');
  const n = r.u64n('mismatched pages');
  if (n > payload.length / 8)
    throw new FormatError('RESULT', 24, `at most ${Math.floor(payload.length / 8)} mismatched gfns`, `${n}`);
  const mismatchedGfns = Array.from({ length: n }, () => r.u64n('gfn'));
  const skipReason = r.bytes(r.u32('skip reason length'), 'skip reason').toString();
  const message = r.bytes(r.u32('message length'), 'message').toString();
  const gfnList = (what: string): number[] => {
    const count = r.u64n(`${what} count`);
    if (count > payload.length / 8)
      throw new FormatError(
        'RESULT',
        0,
        `at most ${Math.floor(payload.length / 8)} ${what} gfns`,
        `${count}`,
      );
    return Array.from({ length: count }, () => r.u64n(`${what} gfn`));
  };
  const perspectiveMismatchGfns = gfnList('perspective mismatch');
  const trackerMismatchGfns = gfnList('tracker mismatch');
  r.end();
  if (verified && (!resumed || comparedPages === 0))
    throw new FormatError('RESULT', 1, 'verified only with resumed and compared pages', 'verified');
  return {
    resumed,
    verified,
    comparedPages,
    skippedPages,
    skipReason,
    mismatchedPages: n,
    mismatchedGfns,
    perspectiveMismatchGfns,
    trackerMismatchGfns,
    generationAfter,
    message,
  };
}

/** ROUND_ACK: the round, and whether the destination's reference digests have had their first pass. */
export function encodeRoundAck(round: number, digestsReady: boolean): Uint8Array {
  return new BinaryWriter()
    .u32(round)
    .u32(digestsReady ? 1 : 0)
    .finish();
}

export function decodeRoundAck(payload: Buffer): { round: number; digestsReady: boolean } {
  const r = new BinaryReader(payload, 'ROUND_ACK');
  const round = r.u32('round');
  const flags = r.u32('flags');
  r.end();
  if ((flags & ~1) !== 0) throw new FormatError('ROUND_ACK', 4, 'flags 0 or 1', `${flags}`);
  return { round, digestsReady: flags === 1 };
}

export function encodeText(text: string): Uint8Array {
  const t = Buffer.from(text);
  return new BinaryWriter().u32(t.length).bytes(t).finish();
}

export function decodeText(payload: Buffer, what: string): string {
  const r = new BinaryReader(payload, what);
  const text = r.bytes(r.u32('length'), 'text').toString();
  r.end();
  return text;
}

export function encodeU64(v: bigint | number): Uint8Array {
  return new BinaryWriter().u64(v).finish();
}

export function decodeU64(payload: Buffer, what: string): bigint {
  const r = new BinaryReader(payload, what);
  const v = r.u64('value');
  r.end();
  return v;
}

export function decodeU32(payload: Buffer, what: string): number {
  const r = new BinaryReader(payload, what);
  const v = r.u32('value');
  r.end();
  return v;
}

export function encodeU32(v: number): Uint8Array {
  return new BinaryWriter().u32(v).finish();
}
