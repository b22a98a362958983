/**
 * The counter file through the native addon: created as one page, resumed
 * where it stood, grown but never shrunk, and a foreign file refused
 * untouched.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/common/errors.js';
import { CounterFile, defaultCounterFile, defaultSocketPath } from '../../src/sysgenid/counter-file.js';
import { tempDir } from '../support/tmp.js';

describe('CounterFile', () => {
  it('creates one page holding the generation at offset 0 and the magic at 8', () => {
    const path = join(tempDir(), 'sysgenid');
    const c = CounterFile.open(path);
    try {
      expect(c.generation).toBe(0);
      c.store(0xdeadbeef);
      expect(c.generation).toBe(0xdeadbeef);
      const page = readFileSync(path);
      expect(page.length).toBe(4096);
      expect(page.readUInt32LE(0)).toBe(0xdeadbeef);
      expect(page.readUInt32LE(8)).toBe(0x43494753);
    } finally {
      c.close();
      c.close(); // twice is a no-op
    }
  });

  it('resumes the generation an earlier service left', () => {
    const path = join(tempDir(), 'sysgenid');
    const first = CounterFile.open(path);
    first.store(17);
    first.close();
    const second = CounterFile.open(path);
    expect(second.generation).toBe(17);
    second.close();
  });

  it('grows a short blank file to a page and never shrinks a longer one', () => {
    const dir = tempDir();
    const short = join(dir, 'short');
    writeFileSync(short, Buffer.from([3, 0, 0, 0]));
    const s = CounterFile.open(short);
    expect(s.generation).toBe(3);
    s.close();
    expect(statSync(short).size).toBe(4096);
    const long = join(dir, 'long');
    writeFileSync(long, Buffer.alloc(8192));
    CounterFile.open(long).close();
    expect(statSync(long).size).toBe(8192);
  });

  it('refuses a FIFO or a symlink at the path at once, without blocking on the open', () => {
    const dir = tempDir();
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    expect(() => CounterFile.open(fifo)).toThrow(/is not a regular file/);
    const target = join(dir, 'real');
    CounterFile.open(target).close();
    const link = join(dir, 'link');
    symlinkSync(target, link);
    expect(() => CounterFile.open(link)).toThrow();
  });

  it('refuses a file that is not a counter file and leaves it untouched', () => {
    const path = join(tempDir(), 'other');
    const content = Buffer.from('#!/bin/sh\necho this is not a counter file\n');
    writeFileSync(path, content);
    expect(() => CounterFile.open(path)).toThrow(FormatError);
    expect(() => CounterFile.open(path)).toThrow(/expected magic 0x43494753 \(or a blank page\) at offset 8/);
    expect(readFileSync(path)).toEqual(content);
  });

  it('defaults under $XDG_RUNTIME_DIR, else /run', () => {
    expect(defaultCounterFile({ XDG_RUNTIME_DIR: '/run/user/1000' })).toBe(
      '/run/user/1000/sevtrack-sysgenid',
    );
    expect(defaultSocketPath({})).toBe('/run/sevtrack-sysgenid.sock');
  });
});
