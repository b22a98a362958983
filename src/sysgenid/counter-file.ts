/**
 * The counter file (docs/sysgenid.md, "The counter file"): one 4096-byte page
 * whose first 4 bytes are the little-endian generation, readable by any
 * process that maps it. The native addon keeps it mapped MAP_SHARED and
 * stores each new generation in place with one atomic 4-byte store, then
 * touches the mtime. Rules: never rename a new file over it (a client that
 * mapped it would keep reading the old page), never truncate it (a client
 * that mapped it would die of SIGBUS on its next load).
 */
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError, InvalidArgumentError, RuntimeFailure } from '../common/errors.js';
import { nativeAddon, type SysgenidCounterHandle } from '../common/native.js';

export const COUNTER_FILE_BYTES = 4096;
export const COUNTER_FILE_MAGIC = 0x43494753; // "SGIC"
export const COUNTER_FILE_VERSION = 1;
const MAGIC_OFFSET = 8;
const VERSION_OFFSET = 12;

/** $XDG_RUNTIME_DIR, else /run: where the default socket and counter file live. */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.XDG_RUNTIME_DIR || '/run';
}

export function defaultCounterFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(runtimeDir(env), 'sevtrack-sysgenid');
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(runtimeDir(env), 'sevtrack-sysgenid.sock');
}

/**
 * Checks the header of an existing file (a missing or empty one is fine).
 * Throws FormatError for a file that holds something else (a foreign magic
 * or another version), so the service never scribbles over a file it does
 * not own.
 */
function checkHeader(path: string): void {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO at the path must not hang the open; O_NOFOLLOW: as
    // the native open, which refuses a symlink.
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const head = Buffer.alloc(16);
  let n: number;
  try {
    if (!fstatSync(fd).isFile())
      throw new InvalidArgumentError(
        '--counter-file',
        `${path} is not a regular file; the counter file must be one page of a regular file`,
      );
    n = readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (n === 0) return;
  const what = `sysgenid counter file ${path}`;
  const magic = n >= MAGIC_OFFSET + 4 ? head.readUInt32LE(MAGIC_OFFSET) : 0;
  if (magic !== COUNTER_FILE_MAGIC && head.subarray(4, n).some((b) => b !== 0)) {
    throw new FormatError(
      what,
      MAGIC_OFFSET,
      `magic 0x${COUNTER_FILE_MAGIC.toString(16)} (or a blank page)`,
      `0x${magic.toString(16)}; choose another --counter-file`,
    );
  }
  const version = n >= VERSION_OFFSET + 2 ? head.readUInt16LE(VERSION_OFFSET) : 0;
  if (magic === COUNTER_FILE_MAGIC && version !== COUNTER_FILE_VERSION) {
    throw new FormatError(what, VERSION_OFFSET, `version ${COUNTER_FILE_VERSION}`, `${version}`);
  }
}

export class CounterFile {
  private constructor(
    readonly path: string,
    private readonly handle: SysgenidCounterHandle,
  ) {}

  /**
   * Opens (or creates) the counter file and maps it. A file left by an
   * earlier service keeps its generation: the counter only grows, across
   * service restarts too.
   */
  static open(path: string): CounterFile {
    checkHeader(path);
    try {
      return new CounterFile(path, nativeAddon().sysgenidCounterOpen(path));
    } catch (err) {
      throw new RuntimeFailure('ERR_SYSGENID_COUNTER_FILE', (err as Error).message, { cause: err });
    }
  }

  /** The generation as a mapping reader sees it (one atomic load). */
  get generation(): number {
    return nativeAddon().sysgenidCounterLoad(this.handle);
  }

  /** Stores the generation in place (atomic 4-byte store) and touches the mtime. */
  store(generation: number): void {
    nativeAddon().sysgenidCounterStore(this.handle, generation);
  }

  close(): void {
    nativeAddon().sysgenidCounterClose(this.handle);
  }
}
