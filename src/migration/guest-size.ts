/**
 * How large a simulated guest may be: from one 4 KiB page up to what this
 * machine can hold. A one-process migration holds two guests (the source's
 * and the destination's); a two-process one holds one per process. Sizes
 * past the limit are refused up front (bad input, exit 2), naming the limit,
 * instead of failing halfway through an allocation or being killed by the
 * kernel's OOM killer once the pages are touched.
 */
import { totalmem } from 'node:os';
import { InvalidArgumentError } from '../common/errors.js';
import { PAGE_SIZE } from '../common/ranges.js';
import { formatBytes } from '../common/units.js';

/** The largest guest the simulated backend addresses (GuestMemory's bound: 1 TiB). */
export const MAX_GUEST_PAGES = 2 ** 28;

/**
 * The share of the machine's RAM the guests of one process may take; the rest
 * stays for the OS, the host store, digests and the process's own heap.
 */
export const GUEST_RAM_SHARE = 0.9;

/** The largest guest size in bytes (a multiple of 4 KiB) when `guests` guests share this process. */
export function maxGuestBytes(guests: number, ramBytes = totalmem()): number {
  const fit = Math.floor((ramBytes * GUEST_RAM_SHARE) / guests / PAGE_SIZE);
  return Math.min(MAX_GUEST_PAGES, fit) * PAGE_SIZE;
}

/**
 * Checks a guest size in bytes and returns its page count. Throws
 * InvalidArgumentError naming `field` and the limit when the size is not a
 * whole number of pages, is below one page, or is more than `guests` guests
 * of it in one process can hold on this machine.
 */
export function guestPagesFor(
  bytes: number,
  options: { guests: number; field?: string; ramBytes?: number },
): number {
  const field = options.field ?? '--memory';
  if (!Number.isSafeInteger(bytes) || bytes < PAGE_SIZE) {
    throw new InvalidArgumentError(
      field,
      `${field} ${bytes} is less than one page; the smallest guest is 4K`,
    );
  }
  if (bytes % PAGE_SIZE !== 0) {
    throw new InvalidArgumentError(
      field,
      `${field} ${bytes} is not a multiple of 4 KiB (one page); round it to whole pages`,
    );
  }
  const ram = options.ramBytes ?? totalmem();
  const max = maxGuestBytes(options.guests, ram);
  if (bytes > max) {
    const where =
      options.guests === 1
        ? 'one guest'
        : `${options.guests} guests of this size in one process (source and destination)`;
    const split =
      options.guests > 1
        ? `, or run source and destination as two processes (--role) for up to ${formatBytes(maxGuestBytes(1, ram))}`
        : '';
    const cap =
      max === MAX_GUEST_PAGES * PAGE_SIZE
        ? 'the simulated backend addresses 1 TiB'
        : `this machine has ${formatBytes(ram)} of RAM and guests may take ${GUEST_RAM_SHARE * 100}% of it`;
    throw new InvalidArgumentError(
      field,
      `${field} ${formatBytes(bytes)} is more than ${where} can hold (${cap}); choose ${field} ${formatBytes(max)} or less${split}`,
    );
  }
  return bytes / PAGE_SIZE;
}
