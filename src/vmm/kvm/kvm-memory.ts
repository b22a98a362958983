/**
 * A KVM guest's memory as the PSP model and the verifier see it, under the
 * kvm backend's memory-encryption model (docs/kvm.md): the guest stores
 * words XOR a per-VM, per-GPA keystream in pages whose c-bit is set. The host
 * reads only raw bytes; these functions hold the key, as the PSP does:
 *
 * - readPages: SEND_UPDATE_DATA's first half: the plaintext of pages the
 *   host BELIEVES encrypted (its tracker's perspective, which may be wrong:
 *   that is what the protocol variants are about), raw bytes for the others;
 * - writePages: RECEIVE_UPDATE_DATA's second half on the destination: pages
 *   believed encrypted are stored under the destination's own key;
 * - guestView: what the guest itself reads (its own c-bit table decides).
 */
import { InvalidArgumentError } from '../../common/errors.js';
import { nativeAddon } from '../../common/native.js';
import { PageBitmap } from '../../common/page-bitmap.js';
import { PAGE_SIZE } from '../../common/ranges.js';
import { kvmLayout } from './control-page.js';
import type { KvmGuest } from './kvm-guest.js';

function checkGfns(guest: KvmGuest, gfns: ArrayLike<number>): void {
  for (let i = 0; i < gfns.length; i++) {
    const g = gfns[i];
    if (!Number.isInteger(g) || g < 0 || g >= guest.ramPages)
      throw new InvalidArgumentError('gfns', `gfn ${g} is outside guest RAM (${guest.ramPages} pages)`);
  }
}

/**
 * For each i: copy(guest page gfns[i], buffer page i), then the keystream
 * over the guest page's bytes where `encrypted` has its bit set.
 */
function eachPage(
  guest: KvmGuest,
  gfns: ArrayLike<number>,
  encrypted: PageBitmap,
  copy: (page: Uint8Array, i: number) => Uint8Array,
): void {
  checkGfns(guest, gfns);
  const xor = nativeAddon().kvmKeystreamXor;
  for (let i = 0; i < gfns.length; i++) {
    const g = gfns[i];
    const transformed = copy(guest.ram.subarray(g * PAGE_SIZE, (g + 1) * PAGE_SIZE), i);
    if (encrypted.test(g)) xor(guest.key, transformed, g * PAGE_SIZE);
  }
}

/** Pages gfns[i] into out at i * 4096: decrypted where `encrypted` (the host's belief) has the bit set. */
export function readPages(
  guest: KvmGuest,
  gfns: ArrayLike<number>,
  encrypted: PageBitmap,
  out: Uint8Array,
): void {
  eachPage(guest, gfns, encrypted, (page, i) => {
    const dst = out.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
    dst.set(page);
    return dst;
  });
}

/** Stores src page i at gfns[i]: under the guest's key where `encrypted` has the bit set, raw otherwise. */
export function writePages(
  guest: KvmGuest,
  gfns: ArrayLike<number>,
  encrypted: PageBitmap,
  src: Uint8Array,
): void {
  eachPage(guest, gfns, encrypted, (page, i) => {
    page.set(src.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    return page;
  });
}

/** A copy of the guest's own c-bit table (1 = encrypted) as a bitmap over its RAM pages. */
export function guestCbits(guest: KvmGuest): PageBitmap {
  const bm = new PageBitmap(guest.ramPages);
  const at = kvmLayout().cbitTableGpa;
  const bytes = new Uint8Array(bm.words.buffer, 0, bm.words.byteLength);
  bytes.set(guest.ram.subarray(at, at + bytes.length));
  return bm;
}
