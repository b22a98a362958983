/** Parsing of operator-facing quantities (sizes, addresses). */
import { InvalidArgumentError } from './errors.js';

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/**
 * Parses a byte size such as `256M`, `2G`, `1T`, `4096` (suffixes are binary,
 * an optional `iB`/`B` is accepted). Throws InvalidArgumentError naming `field`.
 */
export function parseSize(text: string, field: string): number {
  const m = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) {
    throw new InvalidArgumentError(field, `${field} "${text}" is not a size; write e.g. 256M, 2G or 1T`);
  }
  const bytes = Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()];
  if (!Number.isSafeInteger(bytes)) throw new InvalidArgumentError(field, `${field} "${text}" is too large`);
  return bytes;
}

/** Parses a non-negative integer (decimal or 0x hex) as a u64 BigInt. */
export function parseU64(text: string, field: string): bigint {
  const t = text.trim();
  if (!/^(0x[0-9a-f]+|\d+)$/i.test(t)) {
    throw new InvalidArgumentError(
      field,
      `${field} "${text}" is not an unsigned integer (decimal or 0x hex)`,
    );
  }
  const v = BigInt(t);
  if (v > 0xffff_ffff_ffff_ffffn)
    throw new InvalidArgumentError(field, `${field} "${text}" does not fit in 64 bits`);
  return v;
}

/** Parses an integer within [min, max], naming `field` in the error. */
export function parseIntIn(text: string, field: string, min: number, max: number): number {
  const v = Number(text);
  if (!/^-?\d+$/.test(text.trim()) || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(field, `${field} "${text}" must be an integer from ${min} to ${max}`);
  }
  return v;
}

/** Formats a byte count for people: 256 MiB, 1.5 GiB. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}
