import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NativeAddonMissingError } from '../../src/common/errors.js';
import { loadNativeAddon, nativeAddon } from '../../src/common/native.js';

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
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-native-'));
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
