/**
 * Bounds-checked little-endian readers and writers for the wire and file
 * formats. A reader's error says what it expected, what it got, and at which
 * offset (FormatError).
 */
import { FormatError } from './errors.js';

/** The largest high word of a u64 below 2^53 (Number.MAX_SAFE_INTEGER's). */
const MAX_SAFE_HIGH = 0x1fffff;

/** Writes a u64 below 2^53 at `offset`, little-endian, as two u32 halves (no BigInt). */
export function setU64n(view: DataView, offset: number, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0)
    throw new RangeError(`a u64 field takes an integer in [0, 2^53), got ${v}`);
  view.setUint32(offset, v >>> 0, true);
  view.setUint32(offset + 4, Math.floor(v / 2 ** 32), true);
}

export class BinaryReader {
  private off = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
    private readonly base = 0,
  ) {}

  get offset(): number {
    return this.off;
  }

  get remaining(): number {
    return this.buf.length - this.off;
  }

  private need(n: number, field: string): void {
    if (this.off + n > this.buf.length) {
      throw new FormatError(
        this.what,
        this.base + this.off,
        `${n} more bytes for ${field}`,
        `${this.buf.length - this.off}`,
      );
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.buf.readUInt8(this.off++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  i32(field: string): number {
    this.need(4, field);
    const v = this.buf.readInt32LE(this.off);
    this.off += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64LE(this.off);
    this.off += 8;
    return v;
  }

  /**
   * A u64 that must fit a JS number exactly (gfns, counts, sequence numbers).
   * Read as two u32 halves, not through a BigInt: a PAGES header holds 256 of
   * these, and the BigInt round trip was most of decoding it.
   */
  u64n(field: string): number {
    const at = this.off;
    this.need(8, field);
    const lo = this.buf.readUInt32LE(at);
    const hi = this.buf.readUInt32LE(at + 4);
    this.off += 8;
    if (hi > MAX_SAFE_HIGH) {
      const v = (BigInt(hi) << 32n) | BigInt(lo);
      throw new FormatError(this.what, this.base + at, `${field} below 2^53`, `${v}`);
    }
    return hi * 2 ** 32 + lo;
  }

  /** `count` u64s that must each fit a JS number exactly, in one bounds check (a PAGES header's gfns). */
  u64ns(count: number, field: string): Float64Array {
    // Short: read one by one, so the error names the first gfn cut off, at its offset.
    if (this.remaining < count * 8) return Float64Array.from({ length: count }, () => this.u64n(field));
    const out = new Float64Array(count);
    const view = new DataView(this.buf.buffer, this.buf.byteOffset + this.off, count * 8);
    for (let i = 0; i < count; i++) {
      const hi = view.getUint32(i * 8 + 4, true);
      if (hi > MAX_SAFE_HIGH) return this.u64nAt(this.off + i * 8, field) as never;
      out[i] = hi * 2 ** 32 + view.getUint32(i * 8, true);
    }
    this.off += count * 8;
    return out;
  }

  /** Reads the u64 at `at` with u64n, which throws for one at or above 2^53. */
  private u64nAt(at: number, field: string): number {
    this.off = at;
    return this.u64n(field);
  }

  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }

  /** Checks a reserved field is zero. */
  /** A reserved u16 that must be 0. */
  zero16(field: string): void {
    const at = this.off;
    const v = this.u16(field);
    if (v !== 0) throw new FormatError(this.what, this.base + at, `${field} 0`, `${v}`);
  }

  /** A u8 flag that must be 0 or 1. */
  flag(field: string): boolean {
    const at = this.off;
    const v = this.u8(field);
    if (v > 1) throw new FormatError(this.what, this.base + at, `${field} 0 or 1`, `${v}`);
    return v === 1;
  }

  zero32(field: string): void {
    const at = this.off;
    const v = this.u32(field);
    if (v !== 0) throw new FormatError(this.what, this.base + at, `${field} 0`, `${v}`);
  }

  /** Checks nothing is left over. */
  end(): void {
    if (this.off !== this.buf.length) {
      throw new FormatError(
        this.what,
        this.base + this.off,
        'end of payload',
        `${this.buf.length - this.off} extra bytes`,
      );
    }
  }
}

export class BinaryWriter {
  private buf: Buffer;
  private off = 0;
  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  private ensure(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(grown, 0, 0, this.off);
    this.buf = grown;
  }

  u8(v: number): this {
    this.ensure(1);
    this.buf.writeUInt8(v, this.off++);
    return this;
  }

  u16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16LE(v, this.off);
    this.off += 2;
    return this;
  }

  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.off);
    this.off += 4;
    return this;
  }

  i32(v: number): this {
    this.ensure(4);
    this.buf.writeInt32LE(v, this.off);
    this.off += 4;
    return this;
  }

  u64(v: bigint | number): this {
    this.ensure(8);
    this.buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), this.off);
    this.off += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.off);
    this.off += b.length;
    return this;
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.off);
  }
}
