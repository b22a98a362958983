/**
 * The handshake, verdict and small-value decoders of the migration stream
 * (src/migration/stream.ts, docs/migration-stream.md) refuse every payload
 * that is not exactly one message: a FormatError (bad input, exit 2) naming
 * the message, the field, what was expected and the offset, never a
 * RangeError or a value read from past the end.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FormatError, MisuseError } from '../../src/common/errors.js';
import {
  decodeHello,
  decodeHelloAck,
  decodePagesHeader,
  decodeResult,
  decodeRoundAck,
  decodeText,
  decodeU32,
  decodeU64,
  encodeHello,
  encodeHelloAck,
  encodeResult,
  encodeRoundAck,
  encodeText,
  encodeU32,
  encodeU64,
  type Hello,
  PROTOCOLS,
  pagesFrameBytes,
  VERIFY_MODES,
  type VerifyResult,
  writePagesHeader,
} from '../../src/migration/stream.js';

const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

const HELLO: Hello = {
  npages: 4096,
  vcpus: 2,
  protocol: 'safe',
  verify: 'defined',
  generation: 7,
  publicKey: new Uint8Array(32).fill(0xab),
};

const RESULT: VerifyResult = {
  resumed: false,
  verified: false,
  comparedPages: 10,
  skippedPages: 2,
  skipReason: 'content undefined',
  mismatchedPages: 2,
  mismatchedGfns: [3, 9],
  perspectiveMismatchGfns: [4],
  trackerMismatchGfns: [],
  generationAfter: 7,
  message: '2 of 10 compared pages differ',
};

/** Catches what fn throws (undefined when it returns). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** Every message with its decoder: a valid encoding decodes, nothing else does. */
const MESSAGES: { name: string; bytes: Buffer; decode: (b: Buffer) => unknown }[] = [
  { name: 'HELLO', bytes: buf(encodeHello(HELLO)), decode: decodeHello },
  {
    name: 'HELLO_ACK',
    bytes: buf(encodeHelloAck(new Uint8Array(32).fill(1))),
    decode: decodeHelloAck,
  },
  { name: 'RESULT', bytes: buf(encodeResult(RESULT)), decode: decodeResult },
  { name: 'ROUND_ACK', bytes: buf(encodeRoundAck(5, true)), decode: decodeRoundAck },
  { name: 'ABORT', bytes: buf(encodeText('the guest is gone')), decode: (b) => decodeText(b, 'ABORT') },
  { name: 'ROUND_END', bytes: buf(encodeU32(3)), decode: (b) => decodeU32(b, 'ROUND_END') },
  {
    name: 'MIGRATION_CONTROL',
    bytes: buf(encodeU64(1n)),
    decode: (b) => decodeU64(b, 'MIGRATION_CONTROL'),
  },
];

describe('stream decoders refuse what is not exactly one message', () => {
  it('every valid encoding decodes to what was encoded', () => {
    expect(decodeHello(MESSAGES[0].bytes)).toEqual(HELLO);
    expect(decodeHelloAck(MESSAGES[1].bytes)).toEqual({ publicKey: new Uint8Array(32).fill(1) });
    expect(decodeResult(MESSAGES[2].bytes)).toEqual(RESULT);
    expect(decodeRoundAck(MESSAGES[3].bytes)).toEqual({ round: 5, digestsReady: true });
    expect(decodeText(MESSAGES[4].bytes, 'ABORT')).toBe('the guest is gone');
    expect(decodeU32(MESSAGES[5].bytes, 'ROUND_END')).toBe(3);
    expect(decodeU64(MESSAGES[6].bytes, 'MIGRATION_CONTROL')).toBe(1n);
  });

  it('a truncated message: a FormatError naming the message, the missing field and its offset', () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(...MESSAGES)
          .chain((m) =>
            fc.record({ m: fc.constant(m), cut: fc.integer({ min: 0, max: m.bytes.length - 1 }) }),
          ),
        ({ m, cut }) => {
          const e = thrown(() => m.decode(m.bytes.subarray(0, cut)));
          expect(e, `${m.name} cut to ${cut} bytes`).toBeInstanceOf(FormatError);
          const f = e as FormatError;
          expect(f.code).toBe('ERR_BAD_FORMAT');
          expect(f.message).toMatch(new RegExp(`^${m.name}: expected \\d+ more bytes for [a-z ]+ at offset`));
          // The field that is cut short starts at or before the cut.
          expect(f.offset).toBeLessThanOrEqual(cut);
          expect(f.message).toContain(`got ${cut - f.offset}`);
        },
      ),
      { seed: 9, numRuns: 300 },
    );
  });

  it('bytes after the message: refused at the offset where the message ended', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...MESSAGES),
        fc.uint8Array({ minLength: 1, maxLength: 40 }),
        (m, extra) => {
          const e = thrown(() => m.decode(Buffer.concat([m.bytes, extra])));
          expect(e, `${m.name} with ${extra.length} extra bytes`).toBeInstanceOf(FormatError);
          expect((e as FormatError).offset).toBe(m.bytes.length);
          expect((e as Error).message).toBe(
            `${m.name}: expected end of payload at offset ${m.bytes.length}, got ${extra.length} extra bytes`,
          );
        },
      ),
      { seed: 10, numRuns: 200 },
    );
  });

  it('HELLO: an unknown verify mode, a non-zero reserved word, an npages past 2^53', () => {
    const bad = (at: number, write: (b: Buffer) => void) => {
      const b = Buffer.from(MESSAGES[0].bytes);
      write(b);
      const e = thrown(() => decodeHello(b)) as FormatError;
      expect(e).toBeInstanceOf(MisuseError);
      expect(e.offset).toBe(at);
      return e.message;
    };
    expect(bad(13, (b) => b.writeUInt8(VERIFY_MODES.length, 13))).toBe(
      'HELLO: expected a verify mode below 2 at offset 13, got 2',
    );
    expect(bad(12, (b) => b.writeUInt8(PROTOCOLS.length, 12))).toBe(
      'HELLO: expected a protocol below 5 at offset 12, got 5',
    );
    expect(bad(20, (b) => b.writeUInt32LE(1, 20))).toBe('HELLO: expected reserved 0 at offset 20, got 1');
    expect(bad(0, (b) => b.writeBigUInt64LE(2n ** 53n, 0))).toBe(
      `HELLO: expected npages below 2^53 at offset 0, got ${2n ** 53n}`,
    );
  });

  it('HELLO: the reserved u16 after the verify mode must be 0, as docs/migration-stream.md says', () => {
    const b = Buffer.from(MESSAGES[0].bytes);
    b.writeUInt16LE(0xbeef, 14);
    const e = thrown(() => decodeHello(b)) as FormatError;
    expect(e).toBeInstanceOf(FormatError);
    expect(e.offset).toBe(14);
  });

  it('PAGES: gfns and the first sequence up to 2^53 - 1 round-trip exactly; a gfn at 2^53 is refused at its offset', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        (list, firstSeq) => {
          const gfns = Float64Array.from(list);
          const frame = Buffer.alloc(pagesFrameBytes(gfns.length, false));
          writePagesHeader(frame, 3, gfns, firstSeq);
          // The halves are the little-endian u64 a BigInt writer puts there.
          expect(list.map((_, i) => frame.readBigUInt64LE(16 + i * 8))).toEqual(list.map(BigInt));
          const h = decodePagesHeader(frame, false);
          expect([...h.gfns]).toEqual(list);
          expect(h.firstSeq).toBe(firstSeq);
          expect(h.round).toBe(3);
        },
      ),
      { seed: 21, numRuns: 200 },
    );
    const frame = Buffer.alloc(pagesFrameBytes(3, false));
    writePagesHeader(frame, 0, Float64Array.from([1, 2, 3]), 0);
    frame.writeBigUInt64LE(2n ** 53n, 16 + 8);
    const e = thrown(() => decodePagesHeader(frame, false)) as FormatError;
    expect(e).toBeInstanceOf(FormatError);
    expect(e.offset).toBe(24);
    expect(e.message).toBe(`PAGES_RAW: expected gfn below 2^53 at offset 24, got ${2n ** 53n}`);
    // A header cut short names the first gfn that is missing, at its offset.
    const cut = Buffer.from(frame.subarray(0, 16 + 8 + 3));
    expect(() => decodePagesHeader(cut, false)).toThrow(
      'PAGES_RAW: expected 8 more bytes for gfn at offset 24, got 3',
    );
    // The writer refuses what the reader would not read back.
    for (const bad of [-1, 1.5, 2 ** 53, Number.NaN])
      expect(() => writePagesHeader(Buffer.alloc(24), 0, Float64Array.from([bad]), 0)).toThrow(RangeError);
  });

  it('HELLO_ACK: a refusal carries its reason; a status other than 0 or 1, or bytes after the reason, are refused', () => {
    const refusal = buf(encodeHelloAck(undefined, 'cannot allocate the guest'));
    expect(decodeHelloAck(refusal)).toEqual({ error: 'cannot allocate the guest' });
    // The reason's length runs past the payload.
    const short = Buffer.from(refusal.subarray(0, refusal.length - 3));
    expect(() => decodeHelloAck(short)).toThrow(
      'HELLO_ACK: expected 25 more bytes for message at offset 8, got 22',
    );
    const trailing = Buffer.concat([refusal, Buffer.from([0])]);
    expect(thrown(() => decodeHelloAck(trailing))).toBeInstanceOf(FormatError);
    const status = Buffer.from(refusal);
    status.writeUInt32LE(2, 0);
    const e = thrown(() => decodeHelloAck(status)) as FormatError;
    expect(e).toBeInstanceOf(FormatError);
    expect(e.offset).toBe(0);
  });

  it('RESULT: more mismatched gfns than the payload can hold, or verified without a resume, are refused', () => {
    const b = Buffer.from(MESSAGES[2].bytes);
    b.writeBigUInt64LE(2n ** 40n, 24);
    const many = thrown(() => decodeResult(b)) as FormatError;
    expect(many).toBeInstanceOf(FormatError);
    expect(many.offset).toBe(24);
    expect(many.message).toBe(
      `RESULT: expected at most ${Math.floor(b.length / 8)} mismatched gfns at offset 24, got ${2 ** 40}`,
    );
    const v = Buffer.from(MESSAGES[2].bytes);
    v.writeUInt8(1, 1); // verified, but not resumed
    expect(() => decodeResult(v)).toThrow(
      'RESULT: expected verified only with resumed and compared pages at offset 1, got verified',
    );
  });

  it('RESULT: the reserved u16 and the flag bytes hold only what docs/migration-stream.md allows', () => {
    const reserved = Buffer.from(MESSAGES[2].bytes);
    reserved.writeUInt16LE(1, 2);
    expect((thrown(() => decodeResult(reserved)) as FormatError)?.offset).toBe(2);
    const flag = Buffer.from(MESSAGES[2].bytes);
    flag.writeUInt8(2, 0); // resumed is a boolean byte
    expect((thrown(() => decodeResult(flag)) as FormatError)?.offset).toBe(0);
  });

  it('ROUND_ACK: flags other than bit 0 are refused at offset 4', () => {
    const b = buf(encodeRoundAck(5, false));
    b.writeUInt32LE(2, 4);
    expect(() => decodeRoundAck(b)).toThrow('ROUND_ACK: expected flags 0 or 1 at offset 4, got 2');
  });

  it('ABORT: a reason whose length runs past the payload names the text and the bytes left', () => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(100, 0);
    expect(() => decodeText(b, 'ABORT')).toThrow(
      'ABORT: expected 100 more bytes for text at offset 4, got 4',
    );
  });
});
