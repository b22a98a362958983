/**
 * BoundaryList: a sorted set of numeric keys (range starts) with a one-byte
 * value each (the range's state), for PageStateMap. It is a two-level
 * structure: sorted blocks of at most BLOCK_MAX keys in typed arrays, found
 * by binary search over the blocks' first keys. Inserting or deleting moves
 * at most one block's tail (a memmove), so every operation is O(log n +
 * BLOCK_MAX) with small constants.
 *
 * Why not a generic B+ tree (sorted-btree, used at first): its comparator
 * calls and per-node objects made PageStateMap.apply ~4x slower on the ingest
 * benchmark (400k mixed changes on a 64 GiB guest), and apply is on the path
 * of every hypercall.
 *
 * clone() is copy-on-write per block: it copies only the block index; a
 * block shared by two lists is copied by whichever writes it first.
 */

const BLOCK_MAX = 512;

interface Block {
  keys: Float64Array;
  vals: Uint8Array;
  size: number;
  /** The list allowed to write this block in place; any other copies it first. */
  owner: object;
}

function newBlock(owner: object, capacity = BLOCK_MAX): Block {
  return { keys: new Float64Array(capacity), vals: new Uint8Array(capacity), size: 0, owner };
}

/** A position: block index and index inside the block. */
export interface Cursor {
  b: number;
  i: number;
}

export class BoundaryList {
  private blocks: Block[];
  /** blocks[k].keys[0], kept in step with blocks, for the binary search. */
  private firsts: number[];
  private count = 0;
  private token: object = {};

  /** A list holding one key. */
  constructor(key: number, value: number) {
    const b = newBlock(this.token);
    b.keys[0] = key;
    b.vals[0] = value;
    b.size = 1;
    this.blocks = [b];
    this.firsts = [key];
    this.count = 1;
  }

  /**
   * A list of `n` keys already in ascending order (keys[0] first), built
   * block by block with no search or insert per key: a deserialized map of
   * thousands of ranges is built while a migrated guest is paused. Blocks are
   * filled to three quarters, leaving room for inserts.
   */
  static fromSorted(keys: Float64Array, vals: Uint8Array, n: number): BoundaryList {
    if (!Number.isInteger(n) || n < 1 || n > keys.length || n > vals.length) {
      throw new RangeError(`fromSorted: n must be in [1, ${Math.min(keys.length, vals.length)}], got ${n}`);
    }
    const list = new BoundaryList(keys[0], vals[0]);
    const fill = (BLOCK_MAX * 3) >>> 2;
    list.blocks = [];
    list.firsts = [];
    for (let at = 0; at < n; at += fill) {
      const size = Math.min(fill, n - at);
      const block = newBlock(list.token);
      block.keys.set(keys.subarray(at, at + size));
      block.vals.set(vals.subarray(at, at + size));
      block.size = size;
      list.blocks.push(block);
      list.firsts.push(keys[at]);
    }
    list.count = n;
    return list;
  }

  get size(): number {
    return this.count;
  }

  /**
   * Whether both lists hold the same (key, value) entries: one pass over
   * both lists' blocks, which may be split differently. A tight loop, not
   * two iterators: the destination compares two maps of tens of thousands
   * of ranges while the guest is paused.
   */
  sameEntries(other: BoundaryList): boolean {
    if (other.count !== this.count) return false;
    let ob = 0;
    let oi = 0;
    for (const block of this.blocks) {
      for (let i = 0; i < block.size; i++) {
        let theirs = other.blocks[ob];
        if (oi >= theirs.size) {
          ob++;
          oi = 0;
          theirs = other.blocks[ob];
        }
        if (theirs.keys[oi] !== block.keys[i] || theirs.vals[oi] !== block.vals[i]) return false;
        oi++;
      }
    }
    return true;
  }

  clone(): BoundaryList {
    const copy = Object.create(BoundaryList.prototype) as BoundaryList;
    copy.blocks = this.blocks.slice();
    copy.firsts = this.firsts.slice();
    copy.count = this.count;
    copy.token = {};
    // Both sides now share every block: neither may write one in place.
    this.token = {};
    return copy;
  }

  /** Index of the block whose range holds key: the last block with first key <= key (0 if none). */
  private blockFor(key: number): number {
    const f = this.firsts;
    let lo = 0;
    let hi = f.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (f[mid] <= key) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Index of the last key <= key inside block b (-1 if none). */
  private static floorIn(block: Block, key: number): number {
    const k = block.keys;
    let lo = 0;
    let hi = block.size - 1;
    if (hi < 0 || k[0] > key) return -1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (k[mid] <= key) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The position of the greatest key <= key, or undefined if every key is greater. */
  floor(key: number): Cursor | undefined {
    const b = this.blockFor(key);
    const i = BoundaryList.floorIn(this.blocks[b], key);
    return i < 0 ? undefined : { b, i };
  }

  keyAt(c: Cursor): number {
    return this.blocks[c.b].keys[c.i];
  }

  valueAt(c: Cursor): number {
    return this.blocks[c.b].vals[c.i];
  }

  /** The key after c's, or undefined at the end. */
  nextKey(c: Cursor): number | undefined {
    const block = this.blocks[c.b];
    if (c.i + 1 < block.size) return block.keys[c.i + 1];
    return c.b + 1 < this.blocks.length ? this.blocks[c.b + 1].keys[0] : undefined;
  }

  /**
   * Moves c to the next entry in place; returns the new key, or Infinity at
   * the end (c is then past the last entry). Allocation-free, for merge walks.
   */
  advance(c: Cursor): number {
    c.i++;
    let block = this.blocks[c.b];
    if (c.i >= block.size) {
      if (c.b + 1 >= this.blocks.length) return Number.POSITIVE_INFINITY;
      c.b++;
      c.i = 0;
      block = this.blocks[c.b];
    }
    return block.keys[c.i];
  }

  /** The value stored at exactly key, or undefined. */
  get(key: number): number | undefined {
    const c = this.floor(key);
    return c && this.keyAt(c) === key ? this.valueAt(c) : undefined;
  }

  /** Calls fn for every key in [lo, hi) in ascending order. */
  forRange(lo: number, hi: number, fn: (key: number, value: number) => void): void {
    let b = this.blockFor(lo);
    let i = BoundaryList.lowerBound(this.blocks[b], lo);
    for (; b < this.blocks.length; b++, i = 0) {
      const block = this.blocks[b];
      for (; i < block.size; i++) {
        const key = block.keys[i];
        if (key >= hi) return;
        fn(key, block.vals[i]);
      }
    }
  }

  /** Every (key, value) with key >= from, in ascending order (lazily; do not modify while iterating). */
  *entries(from = 0): IterableIterator<[number, number]> {
    let b = this.blockFor(from);
    let i = BoundaryList.lowerBound(this.blocks[b], from);
    for (; b < this.blocks.length; b++, i = 0) {
      const block = this.blocks[b];
      for (; i < block.size; i++) yield [block.keys[i], block.vals[i]];
    }
  }

  private writable(b: number): Block {
    const block = this.blocks[b];
    if (block.owner === this.token) return block;
    const copy = newBlock(this.token);
    copy.keys.set(block.keys.subarray(0, block.size));
    copy.vals.set(block.vals.subarray(0, block.size));
    copy.size = block.size;
    this.blocks[b] = copy;
    return copy;
  }

  /** Inserts key or overwrites its value. */
  set(key: number, value: number): void {
    let b = this.blockFor(key);
    let i = BoundaryList.floorIn(this.blocks[b], key);
    if (i >= 0 && this.blocks[b].keys[i] === key) {
      this.writable(b).vals[i] = value;
      return;
    }
    i++; // insertion point
    if (this.blocks[b].size === BLOCK_MAX) {
      this.split(b);
      if (i > BLOCK_MAX / 2) {
        b++;
        i -= BLOCK_MAX / 2;
      }
    }
    const block = this.writable(b);
    block.keys.copyWithin(i + 1, i, block.size);
    block.vals.copyWithin(i + 1, i, block.size);
    block.keys[i] = key;
    block.vals[i] = value;
    block.size++;
    if (i === 0) this.firsts[b] = key;
    this.count++;
  }

  private split(b: number): void {
    const block = this.blocks[b];
    const half = BLOCK_MAX / 2;
    const left = newBlock(this.token);
    const right = newBlock(this.token);
    left.keys.set(block.keys.subarray(0, half));
    left.vals.set(block.vals.subarray(0, half));
    left.size = half;
    right.keys.set(block.keys.subarray(half, block.size));
    right.vals.set(block.vals.subarray(half, block.size));
    right.size = block.size - half;
    this.blocks.splice(b, 1, left, right);
    this.firsts.splice(b, 1, left.keys[0], right.keys[0]);
  }

  /** Removes key if present; returns whether it was. */
  delete(key: number): boolean {
    const c = this.floor(key);
    if (!c || this.keyAt(c) !== key) return false;
    this.removeAt(c.b, c.i, c.i + 1);
    return true;
  }

  /** Removes every key in [lo, hi]; returns how many. */
  deleteRange(lo: number, hi: number): number {
    let removed = 0;
    let b = this.blockFor(lo);
    while (b < this.blocks.length) {
      const block = this.blocks[b];
      if (block.size > 0 && block.keys[0] > hi) break;
      const from = BoundaryList.lowerBound(block, lo);
      const to = BoundaryList.floorIn(block, hi) + 1;
      const reachesEnd = to === block.size;
      if (from < to) {
        removed += to - from;
        if (this.removeAt(b, from, to)) continue; // the next block moved into slot b
      }
      if (!reachesEnd) break;
      b++;
    }
    return removed;
  }

  /** Index of the first key >= key in block (block.size if none). */
  private static lowerBound(block: Block, key: number): number {
    const i = BoundaryList.floorIn(block, key);
    return i >= 0 && block.keys[i] === key ? i : i + 1;
  }

  /** Removes entries [from, to) of block b; drops the block if it empties. Returns whether it was dropped. */
  private removeAt(b: number, from: number, to: number): boolean {
    const n = to - from;
    if (n <= 0) return false;
    this.count -= n;
    if (this.blocks[b].size === n && this.blocks.length > 1) {
      this.blocks.splice(b, 1);
      this.firsts.splice(b, 1);
      return true;
    }
    const block = this.writable(b);
    block.keys.copyWithin(from, to, block.size);
    block.vals.copyWithin(from, to, block.size);
    block.size -= n;
    if (from === 0 && block.size > 0) this.firsts[b] = block.keys[0];
    return false;
  }
}
