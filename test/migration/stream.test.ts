import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { PageSender, perspectiveBatches } from '../../src/migration/page-sender.js';
import {
  decodeDigests,
  decodeHello,
  decodePages,
  decodePagesHeader,
  decodeResult,
  encodeDigests,
  encodeHello,
  encodePages,
  encodeResult,
  pagesFrameBytes,
  writePagesHeader,
} from '../../src/migration/stream.js';

const buf = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

describe('migration stream messages', () => {
  it('round-trip', () => {
    const hello = {
      npages: 2 ** 28,
      vcpus: 4,
      protocol: 'cbit-first' as const,
      verify: 'defined' as const,
      generation: 7,
      publicKey: new Uint8Array(32).fill(3),
    };
    expect(decodeHello(buf(encodeHello(hello)))).toEqual(hello);
    const pages = {
      round: 2,
      gfns: new Float64Array([2 ** 40, 5]),
      firstSeq: 99,
      data: new Uint8Array(2 * 4096).fill(9),
    };
    expect(decodePages(buf(encodePages(pages)), false)).toEqual(pages);
    const result = {
      resumed: false,
      verified: false,
      comparedPages: 2 ** 33 + 1,
      skippedPages: 7,
      skipReason: 'why',
      mismatchedPages: 3,
      mismatchedGfns: [1, 2, 2 ** 33],
      perspectiveMismatchGfns: [4, 2 ** 40],
      trackerMismatchGfns: [9],
      generationAfter: 0,
      message: 'x',
    };
    expect(decodeResult(buf(encodeResult(result)))).toEqual(result);
    // Every mismatched gfn travels, not the first 16.
    const many = {
      ...result,
      mismatchedPages: 5000,
      mismatchedGfns: Array.from({ length: 5000 }, (_, i) => i * 3),
    };
    expect(decodeResult(buf(encodeResult(many))).mismatchedGfns).toEqual(many.mismatchedGfns);
    // "verified" with nothing compared is malformed.
    expect(() =>
      decodeResult(buf(encodeResult({ ...result, resumed: true, verified: true, comparedPages: 0 }))),
    ).toThrow(/RESULT/);
    // Version 2: a 16-byte view MAC a page.
    const digests = { digests: new Uint8Array(32).fill(1), defined: new Uint32Array([5, 0]) };
    expect(decodeDigests(buf(encodeDigests(digests)), 2)).toEqual(digests);
    expect(() => decodeDigests(buf(encodeDigests({ ...digests, digests: new Uint8Array(64) })), 2)).toThrow(
      /DIGESTS: expected 2 pages at offset 0, got 4/,
    );
    // A PAGES frame built in place (header, then the data sealed or copied after it) is encodePages' bytes.
    const gfns = new Float64Array([3, 2 ** 40, 9]);
    const data = new Uint8Array(3 * PAGE_SIZE).map((_, i) => i & 0xff);
    const frame = new Uint8Array(pagesFrameBytes(3, false) + 100); // a larger, reused buffer
    const offset = writePagesHeader(frame, 7, gfns, 12345);
    frame.set(data, offset);
    const encoded = encodePages({ round: 7, gfns, firstSeq: 12345, data });
    expect(Buffer.from(frame.subarray(0, pagesFrameBytes(3, false))).equals(Buffer.from(encoded))).toBe(true);
    expect(decodePagesHeader(buf(encoded), false)).toEqual({
      round: 7,
      gfns,
      firstSeq: 12345,
      dataOffset: offset,
    });
  });

  it('reject malformed payloads naming the field and offset', () => {
    const hello = buf(
      encodeHello({
        npages: 1,
        vcpus: 1,
        protocol: 'safe',
        verify: 'strict',
        generation: 0,
        publicKey: new Uint8Array(32),
      }),
    );
    const badProto = Buffer.from(hello);
    badProto[12] = 9;
    expect(() => decodeHello(badProto)).toThrow(/HELLO: expected a protocol below 5 at offset 12, got 9/);
    expect(() => decodeHello(hello.subarray(0, 30))).toThrow(
      /HELLO: expected 32 more bytes for public key at offset 24, got 6/,
    );
    const pages = buf(
      encodePages({ round: 0, gfns: new Float64Array([1]), firstSeq: 0, data: new Uint8Array(4096) }),
    );
    expect(() => decodePages(pages.subarray(0, pages.length - 1), false)).toThrow(
      /PAGES_RAW: expected 4096 more bytes for page data/,
    );
    expect(() => decodePages(pages, true)).toThrow(/PAGES_SEALED: expected 4112 more bytes/);
    expect(() =>
      decodeDigests(buf(encodeDigests({ digests: new Uint8Array(16), defined: new Uint32Array(2) })), 2),
    ).toThrow(/DIGESTS: expected 2 pages at offset 0, got 1/);
    // A short "defined" bitmap would silently drop pages from a defined verification.
    expect(() =>
      decodeDigests(buf(encodeDigests({ digests: new Uint8Array(32), defined: new Uint32Array(0) })), 2),
    ).toThrow(/DIGESTS: expected 2 bitmap words for 2 pages at offset 8, got 0/);
  });

  it('a page sender refuses a batch that is not a whole number of pages, naming batchPages', () => {
    const none = undefined as never;
    for (const bad of [0, -4, 2.5, Number.NaN])
      expect(() => new PageSender(none, none, none, bad)).toThrow(
        /batchPages .* must be a whole number of pages, at least 1/,
      );
  });

  it('perspectiveBatches covers every page once, split by the perspective, in batches', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }).chain((n) =>
          fc.record({
            n: fc.constant(n),
            flips: fc.array(fc.tuple(fc.nat(n - 1), fc.integer({ min: 1, max: 20 }), fc.boolean()), {
              maxLength: 10,
            }),
            runs: fc.array(fc.tuple(fc.nat(n - 1), fc.integer({ min: 1, max: 40 })), { maxLength: 6 }),
            batch: fc.integer({ min: 1, max: 17 }),
          }),
        ),
        ({ n, flips, runs, batch }) => {
          const state = new PageStateMap(n);
          for (const [g, k, e] of flips) state.apply(g, Math.min(k, n - g), e);
          // Disjoint ascending runs.
          const marks = new PageStateMap(n, false);
          for (const [g, k] of runs) marks.apply(g, Math.min(k, n - g), true);
          const pageRuns = [...marks.ranges()].filter((r) => r.encrypted);
          const seen = new Map<number, boolean>();
          for (const b of perspectiveBatches(pageRuns, state, batch)) {
            expect(b.gfns.length).toBeGreaterThan(0);
            expect(b.gfns.length).toBeLessThanOrEqual(batch);
            for (const g of b.gfns) {
              expect(seen.has(g)).toBe(false);
              seen.set(g, b.encrypted);
              expect(state.isEncrypted(g)).toBe(b.encrypted);
            }
          }
          const expected = pageRuns.reduce((s, r) => s + r.npages, 0);
          expect(seen.size).toBe(expected);
        },
      ),
    );
  });
});
