import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NativeAddonMissingError } from '../../src/common/errors.js';
import { loadNativeAddon, nativeAddon } from '../../src/common/native.js';
import { tempDir } from '../support/tmp.js';

describe('native addon loader', () => {
  it('loads the built addon with every listed function', () => {
    const addon = nativeAddon();
    for (const fn of ['bitmapSetRange', 'bitmapToRuns', 'bitmapHarvest', 'bitmapXor'] as const) {
      expect(typeof addon[fn]).toBe('function');
    }
  });

  it('names the paths tried and the build command when the binary is missing', () => {
    const paths = [join(tmpdir(), 'nope/build/Release/a.node'), join(tmpdir(), 'nope/build/Debug/a.node')];
    let err: unknown;
    try {
      loadNativeAddon(paths);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeAddonMissingError);
    expect((err as NativeAddonMissingError).code).toBe('ERR_NATIVE_MISSING');
    expect((err as Error).message).toContain(paths[0]);
    expect((err as Error).message).toContain(paths[1]);
    expect((err as Error).message).toContain('npm run build');
  });

  it('rethrows a real load error (a file that is not a shared object) instead of hiding it', () => {
    const dir = tempDir('sevtrack-native-');
    const bogus = join(dir, 'bogus.node');
    writeFileSync(bogus, 'not an ELF file');
    expect(() => loadNativeAddon([bogus])).toThrow(/invalid ELF header|file too short|ERR_DLOPEN/);
    expect(() => loadNativeAddon([bogus])).not.toThrow(NativeAddonMissingError);
  });

  it('rejects a bitmap of odd word length with a message naming the argument', () => {
    expect(() => nativeAddon().bitmapSetRange(new Uint32Array(3), 0, 1)).toThrow(
      /bitmap must cover whole 64-bit words/,
    );
    expect(() => nativeAddon().bitmapCountRange(new Uint32Array(2), 60, 5)).toThrow(
      /exceeds the bitmap's 64 bits/,
    );
    expect(() => nativeAddon().bitmapOr(new Uint32Array(2), new Uint32Array(4), new Uint32Array(2))).toThrow(
      /same length/,
    );
  });
});

describe('native page crypto refuses crafted lengths and indices (a RangeError, never a crash)', () => {
  const key = new Uint8Array(32).map((_, i) => i);

  it('a batch length whose byte size wraps 64 bits', () => {
    const page = new Uint8Array(4096);
    // 2^52 pages * 4096 bytes = 2^64: wraps to 0 in an unchecked product.
    expect(() => nativeAddon().xtsPages(key, true, page, page, 0, 2 ** 52)).toThrow(RangeError);
    expect(() => nativeAddon().xtsPages(key, true, page, page, 0, 2 ** 52 + 1)).toThrow(/overflows|npages/);
  });

  it('a viewDigests range whose byte size wraps 64 bits', () => {
    const memory = new Uint8Array(4 * 4096);
    const cbits = new Uint32Array(2 ** 20);
    expect(() => nativeAddon().viewDigests(key, memory, cbits, 2 ** 52, 1, new Uint8Array(32))).toThrow(
      RangeError,
    );
  });

  it.each([
    ['2^64', 2 ** 64],
    ['-1', -1],
    ['NaN', Number.NaN],
    ['0.5', 0.5],
    ['one past the end', 4],
  ])('an out-of-range gfn (%s) for xtsGather and xtsScatter', (_label, gfn) => {
    const memory = new Uint8Array(4 * 4096);
    const before = memory.slice();
    const gfns = new Float64Array([1, gfn]);
    expect(() => nativeAddon().xtsGather(key, false, memory, new Uint8Array(2 * 4096), gfns)).toThrow(
      /gfns\[1\].*is not an integer in \[0, 4\)/,
    );
    expect(() => nativeAddon().xtsScatter(key, true, new Uint8Array(2 * 4096), memory, gfns)).toThrow(
      RangeError,
    );
    // The page before the bad one may be written; none outside the guest is.
    expect(memory.subarray(2 * 4096)).toEqual(before.subarray(2 * 4096));
  });

  it.each([
    ['2^64', 2 ** 64],
    ['-4096', -4096],
    ['NaN', Number.NaN],
  ])('an out-of-range gpa (%s) for GCM sealing and opening', (_label, gpa) => {
    const gpas = new Float64Array([gpa]);
    expect(() =>
      nativeAddon().gcmSealPages(key, new Uint8Array(4096), new Uint8Array(4112), gpas, 0),
    ).toThrow(/gpas\[0\]/);
    expect(() =>
      nativeAddon().gcmOpenPages(key, new Uint8Array(4112), new Uint8Array(4096), gpas, 0),
    ).toThrow(RangeError);
  });
});
