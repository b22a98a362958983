import { describe, expect, it } from 'vitest';
import {
  decodeHypercall,
  encodeAttributes,
  KVM_EINVAL,
  KVM_ENOSYS,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MAP_GPA_RANGE_ENCRYPTED,
  mapGpaRangeCall,
} from '../../src/common/kvm-abi.js';

const GUEST_PAGES = 2 ** 28; // 1 TiB
const NR = KVM_HC_MAP_GPA_RANGE;

function expectError(r: ReturnType<typeof decodeHypercall>, ret: number, field: string, pattern: RegExp) {
  expect(r.ok).toBe(false);
  if (r.ok) return;
  expect(r.ret).toBe(ret);
  expect(r.field).toBe(field);
  expect(r.message).toMatch(pattern);
}

describe('decodeHypercall', () => {
  it('accepts the 4K, 2M and 1G hints with both states', () => {
    for (const size of [0, 1, 2]) {
      for (const encrypted of [true, false]) {
        const r = decodeHypercall(NR, 0x20_0000n, 512n, encodeAttributes(encrypted, size), GUEST_PAGES);
        expect(r).toEqual({ ok: true, change: { gfn: 0x200, npages: 512, encrypted, pageSizeCode: size } });
      }
    }
  });

  it('decodes 64-bit gfns above 4 GiB and the last page of a 1 TiB guest exactly', () => {
    const last = BigInt(GUEST_PAGES - 1) << 12n;
    const r = decodeHypercall(NR, last, 1n, KVM_MAP_GPA_RANGE_ENCRYPTED, GUEST_PAGES);
    expect(r.ok && r.change.gfn).toBe(GUEST_PAGES - 1);
    const above4g = decodeHypercall(NR, 0x1_2345_6000n, 3n, 0n, GUEST_PAGES);
    expect(above4g.ok && above4g.change).toEqual({
      gfn: 0x123456,
      npages: 3,
      encrypted: false,
      pageSizeCode: 0,
    });
  });

  it('takes only bit 4 as the state: other attribute bits are rejected, not read as encrypted', () => {
    expectError(decodeHypercall(NR, 0, 1, 1n << 5n, GUEST_PAGES), -KVM_EINVAL, 'a2', /reserved bits 63:5/);
    expectError(decodeHypercall(NR, 0, 1, 1n << 63n, GUEST_PAGES), -KVM_EINVAL, 'a2', /0x8000000000000000/);
  });

  it('rejects an unaligned gpa', () => {
    expectError(
      decodeHypercall(NR, 0x1003, 1, 0, GUEST_PAGES),
      -KVM_EINVAL,
      'a0',
      /gpa 0x1003 is not 4 KiB aligned/,
    );
  });

  it('rejects npages 0', () => {
    expectError(decodeHypercall(NR, 0x1000, 0, 0, GUEST_PAGES), -KVM_EINVAL, 'a1', /npages is 0/);
  });

  it('rejects a range that wraps around the address space', () => {
    expectError(
      decodeHypercall(NR, 0xffff_ffff_ffff_f000n, 2n, 0n, GUEST_PAGES),
      -KVM_EINVAL,
      'a1',
      /wraps around/,
    );
    expectError(
      decodeHypercall(NR, 0x1000n, 0xffff_ffff_ffff_ffffn, 0n, GUEST_PAGES),
      -KVM_EINVAL,
      'a1',
      /wraps/,
    );
  });

  it('rejects a range beyond guest memory, accepting one that ends exactly at its end', () => {
    const end = BigInt(GUEST_PAGES) << 12n;
    expectError(decodeHypercall(NR, end, 1n, 0n, GUEST_PAGES), -KVM_EINVAL, 'a1', /beyond guest memory/);
    expectError(
      decodeHypercall(NR, end - 4096n, 2n, 0n, GUEST_PAGES),
      -KVM_EINVAL,
      'a1',
      /beyond guest memory/,
    );
    expect(decodeHypercall(NR, end - 4096n, 1n, 0n, GUEST_PAGES).ok).toBe(true);
  });

  it('rejects a page-size code above 2', () => {
    for (const code of [3n, 0xfn]) {
      expectError(decodeHypercall(NR, 0, 1, code, GUEST_PAGES), -KVM_EINVAL, 'a2', /page-size code \d+/);
    }
  });

  it('answers -KVM_ENOSYS for any other hypercall number', () => {
    expectError(decodeHypercall(5, 0, 1, 0, GUEST_PAGES), -KVM_ENOSYS, 'nr', /hypercall 5 is not handled/);
  });
});

describe('decodeHypercallAt (the wire fast path) equals decodeHypercall', () => {
  it('for random and edge-case arguments', async () => {
    const fc = (await import('fast-check')).default;
    const { decodeHypercallAt } = await import('../../src/common/kvm-abi.js');
    const u64 = fc.oneof(
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      fc.constantFrom(
        0n,
        1n,
        12n,
        0x10n,
        0x11n,
        0x12n,
        0x13n,
        0x20n,
        0x1000n,
        0x1003n,
        1n << 52n,
        (1n << 64n) - 1n,
      ),
      fc.bigInt({ min: 0n, max: 1n << 40n }).map((g) => g << 12n),
      fc.integer({ min: 0, max: 600 }).map(BigInt),
    );
    fc.assert(
      fc.property(u64, u64, u64, u64, fc.constantFrom(1, 256, 2 ** 28, 2 ** 40), (nr, a0, a1, a2, pages) => {
        const buf = Buffer.alloc(40);
        buf.writeBigUInt64LE(nr, 8);
        buf.writeBigUInt64LE(a0, 16);
        buf.writeBigUInt64LE(a1, 24);
        buf.writeBigUInt64LE(a2, 32);
        expect(decodeHypercallAt(buf, 8, pages)).toEqual(decodeHypercall(nr, a0, a1, a2, pages));
      }),
      { numRuns: 3000 },
    );
    const buf = Buffer.alloc(32);
    buf.writeBigUInt64LE(12n, 0);
    buf.writeBigUInt64LE(0x5000n, 8);
    buf.writeBigUInt64LE(2n, 16);
    buf.writeBigUInt64LE(0x10n, 24);
    expect(decodeHypercallAt(buf, 0, 100)).toEqual({
      ok: true,
      change: { gfn: 5, npages: 2, encrypted: true, pageSizeCode: 0 },
    });
  });
});

describe('mapGpaRangeCall', () => {
  it('builds the call a guest makes, which decodes back to the same change', async () => {
    const fc = (await import('fast-check')).default;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: GUEST_PAGES - 1 }),
        fc.integer({ min: 1, max: 4096 }),
        fc.boolean(),
        (gfn, n, encrypted) => {
          const npages = Math.min(n, GUEST_PAGES - gfn);
          const c = mapGpaRangeCall(gfn, npages, encrypted);
          expect(c.nr).toBe(BigInt(NR));
          expect(c.a0).toBe(BigInt(gfn) * 4096n);
          const r = decodeHypercall(c.nr, c.a0, c.a1, c.a2, GUEST_PAGES);
          expect(r).toEqual({ ok: true, change: { gfn, npages, encrypted, pageSizeCode: 0 } });
        },
      ),
    );
  });
});
