/**
 * Working buffers a migration writes all through (frame pools, view-MAC
 * tables), placed on whole transparent huge pages and made resident when
 * allocated. A fresh `new Uint8Array(n)` of several MiB costs one page fault
 * per 4 KiB on first write, about 10 µs each on a 2-core VM under shadow
 * paging: a pool of eight 1 MiB frames and a 4 MiB MAC table per GiB of
 * guest came to ~3,000 faults on the source and ~1,000 on the destination of
 * every 1 GiB migration, taken in the middle of the bulk round. On huge
 * pages the same buffers take a handful.
 *
 * The buffer is a view into a SharedArrayBuffer: JavaScript cannot choose an
 * ArrayBuffer's address, so a larger one is allocated and the view starts
 * at its first 2 MiB boundary (native hugePageOffset). Being shared, it can
 * be posted to another thread without being transferred (port-channel.ts
 * lends frames that way). Where the kernel has THP off, or cannot populate
 * the pages now, the buffer is still returned and faults in on first use,
 * as an ordinary one would.
 */
import { InvalidArgumentError } from './errors.js';
import { nativeAddon } from './native.js';

export const HUGE_PAGE_BYTES = 2 * 1024 * 1024;

const roundUp = (n: number, unit: number) => Math.ceil(n / unit) * unit;

/** `bytes` zeroed bytes starting on a huge-page boundary, resident now where the kernel allows. */
export function residentBuffer(bytes: number): Uint8Array {
  if (!Number.isSafeInteger(bytes) || bytes < 0)
    throw new InvalidArgumentError(
      'bytes',
      `a resident buffer's size must be a whole number of bytes, got ${bytes}`,
    );
  const span = roundUp(Math.max(bytes, 1), HUGE_PAGE_BYTES);
  const whole = new Uint8Array(new SharedArrayBuffer(span + HUGE_PAGE_BYTES));
  const native = nativeAddon();
  const offset = native.hugePageOffset(whole);
  const region = whole.subarray(offset, offset + span);
  native.adviseHugePages(region);
  native.prefaultMemory(region);
  return region.subarray(0, bytes);
}
