/**
 * PageStateMap: the encryption state (c-bit) of every 4 KiB frame of one
 * guest, kept as sorted, coalesced ranges in a BoundaryList keyed by the first gfn
 * of each range. Frame 0 always starts a range, and two adjacent ranges never
 * share a state, so the map of a guest with one state is a single key.
 *
 * Cost: apply and isEncrypted are O(log R + k), where R is the number of ranges
 * and k the ranges the change touches; diff is O(R_a + R_b). None of them
 * depends on the guest's size (docs/design.md §3 rule 1 keeps the FULL state).
 */

import { setU64n } from '../common/binary.js';
import { FormatError, InvalidArgumentError } from '../common/errors.js';
import { zlib } from '../common/node-compat.js';
import { PageBitmap } from '../common/page-bitmap.js';
import type { PageRange, StateRange } from '../common/ranges.js';
import { BoundaryList } from './boundary-list.js';

/** A guest has at most 2^52 frames so every gfn is an exact JS number. */
export const MAX_GUEST_PAGES = 2 ** 52;

const MAGIC = 0x53505653; // "SVPS" little-endian
const FORMAT_VERSION = 1;
const HEADER_BYTES = 32;
const TRAILER_BYTES = 4;

export class PageStateMap {
  readonly npages: number;
  /** Range starts; value 1 = encrypted. */
  private tree: BoundaryList;
  private encryptedPages: number;

  /** A map of npages frames, all in state `encrypted` (SEV guests start private). */
  constructor(npages: number, encrypted = true) {
    if (!Number.isInteger(npages) || npages < 1 || npages > MAX_GUEST_PAGES) {
      throw new InvalidArgumentError(
        'npages',
        `npages ${npages} must be an integer in [1, 2^52] (the guest's size in 4 KiB pages)`,
      );
    }
    this.npages = npages;
    this.tree = new BoundaryList(0, encrypted ? 1 : 0);
    this.encryptedPages = encrypted ? npages : 0;
  }

  /** Number of encrypted (private) frames. */
  get encryptedCount(): number {
    return this.encryptedPages;
  }

  /** Number of shared (decrypted) frames. */
  get sharedCount(): number {
    return this.npages - this.encryptedPages;
  }

  /** Number of coalesced ranges. */
  get rangeCount(): number {
    return this.tree.size;
  }

  private checkRange(gfn: number, npages: number): void {
    if (!Number.isInteger(gfn) || gfn < 0 || gfn >= this.npages) {
      throw new InvalidArgumentError('gfn', `gfn ${gfn} is outside the guest's ${this.npages} pages`);
    }
    if (!Number.isInteger(npages) || npages < 1 || npages > this.npages - gfn) {
      throw new InvalidArgumentError(
        'npages',
        `npages ${npages} at gfn ${gfn} must be at least 1 and end within the guest's ${this.npages} pages`,
      );
    }
  }

  /** The state of frame gfn. */
  isEncrypted(gfn: number): boolean {
    this.checkRange(gfn, 1);
    return this.tree.valueAt(this.tree.floor(gfn)!) === 1;
  }

  /**
   * Sets frames (gfn, npages) to `encrypted`; returns how many frames changed
   * state (0 when the range already had it).
   */
  apply(gfn: number, npages: number, encrypted: boolean): number {
    this.checkRange(gfn, npages);
    const end = gfn + npages;
    const at = this.tree.floor(gfn)!;
    const firstKey = this.tree.keyAt(at);
    const firstState = this.tree.valueAt(at) === 1;
    const nextKey = this.tree.nextKey(at) ?? this.npages;
    const value = encrypted ? 1 : 0;
    if (nextKey >= end) {
      if (firstState === encrypted) return 0;
      // Fast path: the change lies inside one range of the other state. With
      // two states, the neighbours of that range hold `encrypted`, so a change
      // touching a range edge merges into the neighbour.
      if (firstKey < gfn) this.tree.set(gfn, value);
      else if (gfn === 0) this.tree.set(0, value);
      else this.tree.delete(gfn);
      if (nextKey === end) {
        if (end < this.npages) this.tree.delete(end);
      } else {
        this.tree.set(end, 1 - value);
      }
      this.encryptedPages += encrypted ? npages : -npages;
      return npages;
    }

    // Count the frames that flip, walking the ranges inside (gfn, npages).
    let flipped = 0;
    let segStart = gfn;
    let segState = firstState;
    this.tree.forRange(gfn + 1, end, (key, state) => {
      if (segState !== encrypted) flipped += key - segStart;
      segStart = key;
      segState = state === 1;
    });
    if (segState !== encrypted) flipped += end - segStart;
    const atEnd = this.tree.get(end);
    const stateAtEnd = atEnd === undefined ? segState : atEnd === 1;
    const stateBefore = gfn > 0 ? this.tree.valueAt(this.tree.floor(gfn - 1)!) === 1 : undefined;

    this.tree.deleteRange(gfn, end);
    if (stateBefore !== encrypted) this.tree.set(gfn, value);
    if (end < this.npages && stateAtEnd !== encrypted) this.tree.set(end, stateAtEnd ? 1 : 0);
    this.encryptedPages += encrypted ? flipped : -flipped;
    return flipped;
  }

  /** The ranges in ascending gfn order, starting with the one holding fromGfn. */
  *ranges(fromGfn = 0): IterableIterator<StateRange> {
    if (fromGfn >= this.npages) return;
    const at = this.tree.floor(fromGfn)!;
    let start = this.tree.keyAt(at);
    let state = this.tree.valueAt(at) === 1;
    for (const [key, value] of this.tree.entries(start + 1)) {
      yield { gfn: start, npages: key - start, encrypted: state };
      start = key;
      state = value === 1;
    }
    yield { gfn: start, npages: this.npages - start, encrypted: state };
  }

  /**
   * The encrypted frames as a bitmap. The destination builds it while the
   * guest is paused, in code that runs once per process (never optimized):
   * through the ranges() generator it took 8-12 ms for a 2 GiB mixed guest's
   * ~9k ranges, and one setRange call per range 10 ms for a booted guest's
   * 37k. So the range starts are walked with a callback into a run list,
   * set in one native call.
   */
  encryptedBitmap(): PageBitmap {
    const bits = new PageBitmap(this.npages);
    const runs = new Float64Array(this.tree.size + 1); // at most ceil(ranges / 2) runs, two numbers each
    let n = 0;
    let start = 0;
    let encrypted = this.tree.get(0) === 1;
    this.tree.forRange(1, this.npages, (key, value) => {
      if (encrypted) {
        runs[n++] = start;
        runs[n++] = key - start;
      }
      start = key;
      encrypted = value === 1;
    });
    if (encrypted) {
      runs[n++] = start;
      runs[n++] = this.npages - start;
    }
    bits.setRuns(runs.subarray(0, n));
    return bits;
  }

  /**
   * The coalesced ranges where `other` differs from this map, each carrying
   * other's state: applying them to this map makes it equal to `other`.
   * With `windows` (sorted, disjoint ranges, e.g. the frames changed since a
   * sync), only those frames are compared: the cost is then the ranges inside
   * the windows, not the ranges of the whole guest.
   */
  diff(other: PageStateMap, windows?: readonly PageRange[]): StateRange[] {
    if (other.npages !== this.npages) {
      throw new InvalidArgumentError(
        'other',
        `cannot diff maps of ${this.npages} and ${other.npages} pages: both must describe one guest`,
      );
    }
    // Equal maps (the destination's record of arrivals against the final
    // state, usually) are told apart in one tight pass, not a merge walk:
    // for a booted guest's 37k ranges the walk took 7-13 ms while paused.
    if (!windows && this.equals(other)) return [];
    const out: StateRange[] = [];
    for (const w of windows ?? [{ gfn: 0, npages: this.npages }])
      this.diffWindow(other, w.gfn, w.gfn + w.npages, out);
    return out;
  }

  /**
   * Merge-walks the boundaries of both maps inside [gfn, end) with two
   * cursors, appending the differing segments to out (coalescing with out's
   * last range). Allocation-free but for the output.
   */
  private diffWindow(other: PageStateMap, gfn: number, end: number, out: StateRange[]): void {
    const ta = this.tree;
    const tb = other.tree;
    const ca = ta.floor(gfn)!;
    const cb = tb.floor(gfn)!;
    let stateA = ta.valueAt(ca);
    let stateB = tb.valueAt(cb);
    let nextA = ta.nextKey(ca) ?? Number.POSITIVE_INFINITY;
    let nextB = tb.nextKey(cb) ?? Number.POSITIVE_INFINITY;
    let pos = gfn;
    while (pos < end) {
      const segEnd = Math.min(nextA, nextB, end);
      if (stateA !== stateB) {
        const target = stateB === 1;
        const last = out[out.length - 1];
        if (last !== undefined && last.gfn + last.npages === pos && last.encrypted === target) {
          last.npages += segEnd - pos;
        } else {
          out.push({ gfn: pos, npages: segEnd - pos, encrypted: target });
        }
      }
      pos = segEnd;
      if (nextA === segEnd) {
        ta.advance(ca);
        stateA = ta.valueAt(ca);
        nextA = ta.nextKey(ca) ?? Number.POSITIVE_INFINITY;
      }
      if (nextB === segEnd) {
        tb.advance(cb);
        stateB = tb.valueAt(cb);
        nextB = tb.nextKey(cb) ?? Number.POSITIVE_INFINITY;
      }
    }
  }

  /** Whether both maps hold the same state for every frame. */
  equals(other: PageStateMap): boolean {
    return (
      other.npages === this.npages &&
      other.encryptedPages === this.encryptedPages &&
      this.tree.sameEntries(other.tree)
    );
  }

  /** An independent copy (copy-on-write: O(1) until either side changes). */
  clone(): PageStateMap {
    const copy = Object.create(PageStateMap.prototype) as PageStateMap;
    Object.assign(copy, {
      npages: this.npages,
      tree: this.tree.clone(),
      encryptedPages: this.encryptedPages,
    });
    return copy;
  }

  /**
   * The compact binary form (docs/formats.md, "page-state map"): a 32-byte
   * header, the start gfn of every range after the first, and a CRC-32.
   */
  serialize(): Uint8Array {
    const nranges = this.tree.size;
    const buf = Buffer.alloc(HEADER_BYTES + 8 * (nranges - 1) + TRAILER_BYTES);
    buf.writeUInt32LE(MAGIC, 0);
    buf.writeUInt16LE(FORMAT_VERSION, 4);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    setU64n(view, 8, this.npages);
    setU64n(view, 16, nranges);
    buf.writeUInt8(this.tree.get(0)!, 24);
    let off = HEADER_BYTES;
    this.tree.forRange(1, this.npages, (key) => {
      setU64n(view, off, key);
      off += 8;
    });
    buf.writeUInt32LE(zlib.crc32(buf.subarray(0, off)), off);
    return buf;
  }

  /** Parses serialize()'s output; throws FormatError naming the offset of the first problem. */
  static deserialize(bytes: Uint8Array): PageStateMap {
    const what = 'page-state map';
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (buf.length < HEADER_BYTES + TRAILER_BYTES) {
      throw new FormatError(
        what,
        buf.length,
        `at least ${HEADER_BYTES + TRAILER_BYTES} bytes`,
        `end of buffer`,
      );
    }
    const magic = buf.readUInt32LE(0);
    if (magic !== MAGIC) throw new FormatError(what, 0, `magic "SVPS"`, `0x${magic.toString(16)}`);
    const version = buf.readUInt16LE(4);
    if (version !== FORMAT_VERSION) throw new FormatError(what, 4, `version ${FORMAT_VERSION}`, `${version}`);
    const reserved = buf.readUInt16LE(6);
    if (reserved !== 0) throw new FormatError(what, 6, 'reserved 0', `${reserved}`);
    const npages = buf.readBigUInt64LE(8);
    if (npages < 1n || npages > BigInt(MAX_GUEST_PAGES)) {
      throw new FormatError(what, 8, 'a page count in [1, 2^52]', `${npages}`);
    }
    const nranges = buf.readBigUInt64LE(16);
    if (nranges < 1n || nranges > npages)
      throw new FormatError(what, 16, `a range count in [1, ${npages}]`, `${nranges}`);
    const expectedLength = HEADER_BYTES + 8 * (Number(nranges) - 1) + TRAILER_BYTES;
    if (buf.length !== expectedLength) {
      throw new FormatError(
        what,
        Math.min(buf.length, expectedLength),
        `${expectedLength} bytes in all`,
        `${buf.length}`,
      );
    }
    const first = buf.readUInt8(24);
    if (first > 1) throw new FormatError(what, 24, 'state 0 or 1', `${first}`);
    for (let i = 25; i < HEADER_BYTES; i++) {
      if (buf[i] !== 0) throw new FormatError(what, i, 'reserved 0', `${buf[i]}`);
    }
    const crcOffset = expectedLength - TRAILER_BYTES;
    const crc = buf.readUInt32LE(crcOffset);
    const actual = zlib.crc32(buf.subarray(0, crcOffset));
    if (crc !== actual) {
      throw new FormatError(what, crcOffset, `CRC-32 0x${actual.toString(16)}`, `0x${crc.toString(16)}`);
    }
    const map = new PageStateMap(Number(npages), first === 1);
    // Keys as u32 halves (no BigInt), checked ascending, then the list is
    // built in one pass: CBIT_STATE is decoded while the guest is paused.
    const count = Number(nranges);
    const keys = new Float64Array(count);
    const vals = new Uint8Array(count);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    vals[0] = first;
    let prev = 0;
    let state = first === 1;
    let encrypted = 0;
    for (let i = 1, off = HEADER_BYTES; off < crcOffset; i++, off += 8) {
      const key = view.getUint32(off + 4, true) * 2 ** 32 + view.getUint32(off, true);
      if (key <= prev || key >= map.npages) {
        const exact = buf.readBigUInt64LE(off); // the key as written, past 2^53 too
        throw new FormatError(what, off, `a range start in (${prev}, ${map.npages})`, `${exact}`);
      }
      if (state) encrypted += key - prev;
      state = !state;
      keys[i] = key;
      vals[i] = state ? 1 : 0;
      prev = key;
    }
    if (state) encrypted += map.npages - prev;
    map.tree = BoundaryList.fromSorted(keys, vals, count);
    map.encryptedPages = encrypted;
    return map;
  }
}
