/**
 * The change-log segment: the packed records of one committed batch of c-bit
 * changes (docs/formats.md). 16 bytes a record, little-endian:
 * u64 gfn | (encrypted << 63), u64 npages. The segment's row holds first_seq
 * and count; record i has sequence number first_seq + i.
 */
import { FormatError } from '../common/errors.js';

export const RECORD_BYTES = 16;
const TWO32 = 2 ** 32;

/**
 * Appends records to a growable buffer; one writer per pending batch. Writes
 * through a Uint32Array view (this is on every hypercall's path): on a
 * little-endian host that is the record layout byte for byte.
 */
export class SegmentWriter {
  private words = new Uint32Array(4 * 64);
  private n = 0;

  get count(): number {
    return this.n;
  }

  push(gfn: number, npages: number, encrypted: boolean): void {
    if ((this.n + 1) * 4 > this.words.length) {
      const grown = new Uint32Array(this.words.length * 2);
      grown.set(this.words);
      this.words = grown;
    }
    const w = this.words;
    const o = this.n * 4;
    w[o] = gfn % TWO32;
    w[o + 1] = Math.floor(gfn / TWO32) + (encrypted ? 0x8000_0000 : 0);
    w[o + 2] = npages % TWO32;
    w[o + 3] = Math.floor(npages / TWO32);
    this.n++;
  }

  /** The records written so far (a copy); the writer is reset. */
  take(): Buffer {
    const out = Buffer.from(this.words.buffer.slice(0, this.n * RECORD_BYTES));
    this.n = 0;
    return out;
  }
}

/**
 * Calls fn for each of the first `limit` records of a segment (all by
 * default). Throws FormatError if the blob does not hold `count` records.
 */
export function forEachRecord(
  records: Uint8Array,
  count: number,
  fn: (gfn: number, npages: number, encrypted: boolean, index: number) => void,
  limit = count,
): void {
  if (records.byteLength !== count * RECORD_BYTES) {
    throw new FormatError(
      'change-log segment',
      0,
      `${count * RECORD_BYTES} bytes (${count} records)`,
      `${records.byteLength} bytes`,
    );
  }
  const b = Buffer.from(records.buffer, records.byteOffset, records.byteLength);
  for (let i = 0; i < Math.min(count, limit); i++) {
    const o = i * RECORD_BYTES;
    const hi = b.readUInt32LE(o + 4);
    fn(
      b.readUInt32LE(o) + (hi & 0x7fff_ffff) * TWO32,
      b.readUInt32LE(o + 8) + b.readUInt32LE(o + 12) * TWO32,
      hi >= 0x8000_0000,
      i,
    );
  }
}
