/**
 * The guest/host ABI of docs/design.md §2, matching Linux/KVM exactly, so a real
 * VMM could forward its KVM_EXIT_HYPERCALL exits unchanged. Shared by the
 * guest helper (which issues the hypercall) and the host (which decodes it).
 */
import { PAGE_SHIFT } from './ranges.js';

/** include/uapi/linux/kvm_para.h */
export const KVM_HC_MAP_GPA_RANGE = 12;

/** Attribute bits 3:0: preferred page size (a hint only). */
export const KVM_MAP_GPA_RANGE_PAGE_SZ_4K = 0;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_1G = 2;
export const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK = 0xfn;
/** Attribute bit 4: 1 = encrypted (private), 0 = decrypted (shared). */
export const KVM_MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;
export const KVM_MAP_GPA_RANGE_DECRYPTED = 0n;
/** Bits 63:5 must be zero. */
export const KVM_MAP_GPA_RANGE_RESERVED_MASK = ~0x1fn & 0xffff_ffff_ffff_ffffn;

/** Frames covered by one page of each size code. */
export const PAGE_SIZE_CODE_PAGES: Readonly<Record<number, number>> = { 0: 1, 1: 512, 2: 512 * 512 };

/** KVM's hypercall return codes (include/uapi/linux/kvm_para.h), as negatives. */
export const KVM_ENOSYS = 1000;
export const KVM_EFAULT = 14; // EFAULT
export const KVM_EINVAL = 22; // EINVAL
export const KVM_E2BIG = 7; // E2BIG
export const KVM_EPERM = 1; // EPERM
export const KVM_EOPNOTSUPP = 95; // EOPNOTSUPP

/** KVM_CAP_EXIT_HYPERCALL: args[0] is the bitmask of hypercalls forwarded to userspace. */
export const KVM_CAP_EXIT_HYPERCALL = 201;
export const KVM_EXIT_HYPERCALL = 3;
/** struct kvm_run.hypercall.flags bit 0: the guest was in long mode. */
export const KVM_EXIT_HYPERCALL_LONG_MODE = 1;

/** CPUID leaf and feature bits the guest checks before using the protocol. */
export const KVM_CPUID_FEATURES = 0x4000_0001;
export const KVM_FEATURE_HC_MAP_GPA_RANGE = 16;
export const KVM_FEATURE_MIGRATION_CONTROL = 17;

/** The guest writes KVM_MIGRATION_READY here once it reports every change. */
export const MSR_KVM_MIGRATION_CONTROL = 0x4b56_4d08;
export const KVM_MIGRATION_READY = 1n << 0n;

/** A decoded, valid MAP_GPA_RANGE request. */
export interface GpaRangeChange {
  gfn: number;
  npages: number;
  encrypted: boolean;
  /** The page-size hint (0 = 4K, 1 = 2M, 2 = 1G). */
  pageSizeCode: number;
}

export type DecodeResult =
  | { ok: true; change: GpaRangeChange }
  | { ok: false; ret: number; field: string; message: string };

/** One past the last gfn of the 64-bit physical address space. */
const GFN_LIMIT = 1n << BigInt(64 - PAGE_SHIFT);

function toU64(value: bigint | number): bigint {
  return BigInt.asUintN(64, BigInt(value));
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/**
 * Decodes one hypercall (nr, a0, a1, a2) from a guest of guestPages frames.
 * Returns the typed change, or the exact (negative) KVM return code with a
 * message naming the offending argument. The checks KVM itself makes come
 * first (aligned gpa, npages != 0, no wrap-around), then sevtrack's stricter
 * ones (inside guest memory, no reserved attribute bits, a known size code).
 */
export function decodeHypercall(
  nr: bigint | number,
  a0: bigint | number,
  a1: bigint | number,
  a2: bigint | number,
  guestPages: number,
): DecodeResult {
  const fail = (ret: number, field: string, message: string): DecodeResult => ({
    ok: false,
    ret,
    field,
    message,
  });
  if (toU64(nr) !== BigInt(KVM_HC_MAP_GPA_RANGE)) {
    return fail(-KVM_ENOSYS, 'nr', `hypercall ${toU64(nr)} is not handled (only KVM_HC_MAP_GPA_RANGE = 12)`);
  }
  const gpa = toU64(a0);
  const npages = toU64(a1);
  const attrs = toU64(a2);
  if ((gpa & 0xfffn) !== 0n) {
    return fail(-KVM_EINVAL, 'a0', `gpa ${hex(gpa)} is not 4 KiB aligned (KVM_HC_MAP_GPA_RANGE a0)`);
  }
  if (npages === 0n) {
    return fail(-KVM_EINVAL, 'a1', 'npages is 0; it must be at least 1 (KVM_HC_MAP_GPA_RANGE a1)');
  }
  const gfn = gpa >> BigInt(PAGE_SHIFT);
  // KVM rejects a gfn range that wraps; its end address, gpa + npages * 4 KiB,
  // must not pass 2^64 either (BigInt arithmetic itself never wraps).
  if (gfn + npages > GFN_LIMIT) {
    return fail(
      -KVM_EINVAL,
      'a1',
      `range gpa ${hex(gpa)} + ${npages} pages wraps around the 64-bit address space (KVM_HC_MAP_GPA_RANGE a1)`,
    );
  }
  if (gfn + npages > BigInt(guestPages)) {
    return fail(
      -KVM_EINVAL,
      'a1',
      `range gpa ${hex(gpa)} + ${npages} pages ends beyond guest memory (${guestPages} pages) (KVM_HC_MAP_GPA_RANGE a0/a1)`,
    );
  }
  if ((attrs & KVM_MAP_GPA_RANGE_RESERVED_MASK) !== 0n) {
    return fail(
      -KVM_EINVAL,
      'a2',
      `attributes ${hex(attrs)} set reserved bits 63:5 (${hex(attrs & KVM_MAP_GPA_RANGE_RESERVED_MASK)}); only bits 3:0 (size) and 4 (encrypted) are defined (KVM_HC_MAP_GPA_RANGE a2)`,
    );
  }
  const pageSizeCode = Number(attrs & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK);
  if (pageSizeCode > KVM_MAP_GPA_RANGE_PAGE_SZ_1G) {
    return fail(
      -KVM_EINVAL,
      'a2',
      `page-size code ${pageSizeCode} in attributes bits 3:0 is not 0 (4K), 1 (2M) or 2 (1G) (KVM_HC_MAP_GPA_RANGE a2)`,
    );
  }
  return {
    ok: true,
    change: {
      gfn: Number(gfn),
      npages: Number(npages),
      encrypted: (attrs & KVM_MAP_GPA_RANGE_ENCRYPTED) !== 0n,
      pageSizeCode,
    },
  };
}

/** The a2 attributes for a change: the state bit plus a page-size hint. */
export function encodeAttributes(encrypted: boolean, pageSizeCode = KVM_MAP_GPA_RANGE_PAGE_SZ_4K): bigint {
  return (encrypted ? KVM_MAP_GPA_RANGE_ENCRYPTED : KVM_MAP_GPA_RANGE_DECRYPTED) | BigInt(pageSizeCode);
}

/** One hypercall's registers as a guest loads them (struct kvm_run.hypercall: nr, args[0..2]). */
export interface HypercallRegisters {
  nr: bigint;
  a0: bigint;
  a1: bigint;
  a2: bigint;
}

/** The MAP_GPA_RANGE call that converts pages [gfn, gfn + npages) to encrypted or shared, 4K size hint. */
export function mapGpaRangeCall(gfn: number, npages: number, encrypted: boolean): HypercallRegisters {
  return {
    nr: BigInt(KVM_HC_MAP_GPA_RANGE),
    a0: BigInt(gfn) << BigInt(PAGE_SHIFT),
    a1: BigInt(npages),
    a2: encodeAttributes(encrypted),
  };
}

const TWO32 = 2 ** 32;

/**
 * decodeHypercall for (nr, a0, a1, a2) stored as four little-endian u64 at
 * `offset` of buf (a kvm_run exit or a wire frame). The common valid case is
 * decoded with 32-bit arithmetic; anything else goes through decodeHypercall,
 * so the result, including every error, is the same for every input.
 */
export function decodeHypercallAt(buf: Buffer, offset: number, guestPages: number): DecodeResult {
  const nrLo = buf.readUInt32LE(offset);
  const nrHi = buf.readUInt32LE(offset + 4);
  const gpaLo = buf.readUInt32LE(offset + 8);
  const gpaHi = buf.readUInt32LE(offset + 12);
  const npLo = buf.readUInt32LE(offset + 16);
  const npHi = buf.readUInt32LE(offset + 20);
  const atLo = buf.readUInt32LE(offset + 24);
  const atHi = buf.readUInt32LE(offset + 28);
  if (
    nrLo === KVM_HC_MAP_GPA_RANGE &&
    nrHi === 0 &&
    (gpaLo & 0xfff) === 0 &&
    gpaHi < 0x10_0000 &&
    npHi === 0 &&
    npLo !== 0 &&
    atHi === 0 &&
    (atLo & ~0x1f) === 0 &&
    (atLo & 0xf) <= KVM_MAP_GPA_RANGE_PAGE_SZ_1G
  ) {
    const gfn = gpaHi * 2 ** 20 + (gpaLo >>> 12);
    if (gfn + npLo <= guestPages) {
      return {
        ok: true,
        change: { gfn, npages: npLo, encrypted: (atLo & 0x10) !== 0, pageSizeCode: atLo & 0xf },
      };
    }
  }
  const u64 = (lo: number, hi: number) => BigInt(hi) * BigInt(TWO32) + BigInt(lo);
  return decodeHypercall(u64(nrLo, nrHi), u64(gpaLo, gpaHi), u64(npLo, npHi), u64(atLo, atHi), guestPages);
}
