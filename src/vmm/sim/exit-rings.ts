/**
 * Per-vCPU exit rings (docs/design.md, threading): each vCPU thread handles
 * its own MAP_GPA_RANGE exits by appending the validated change to its own
 * ordered ring in shared memory and returning to the guest; the tracker
 * drains every ring into the c-bit store. One SharedArrayBuffer holds all
 * rings of a VM:
 *
 *   Int32 word 0        TICKET   next global ticket (wraps at 2^32)
 *   Int32 word 1        DOORBELL bumped by a vCPU that wants a drain (ring half full or full)
 *   per vCPU v, at HEADER_WORDS + v * (RING_HEADER + capacity * ENTRY_WORDS):
 *     [0] HEAD    entries published by the vCPU (only it writes HEAD)
 *     [1] TAIL    entries released by the tracker (only it writes TAIL)
 *     entries of ENTRY_WORDS: ticket, gfn, npages, encrypted (0/1)
 *
 * Ordering rules, kept here:
 * - A change is in host memory (published in the ring) before the vCPU's
 *   hypercall returns to the guest.
 * - Tickets order changes across vCPUs: a vCPU takes its ticket only once
 *   its ring has room and publishes the entry right after, never waiting in
 *   between; so every ticket below the counter a drain reads is published
 *   moments later, and a change whose call returned before the drain began
 *   has a ticket below it. The tracker applies changes in ticket order, so a
 *   page converted by vCPU 0 and then (after that call returned) by vCPU 1
 *   ends in vCPU 1's state.
 * - A full ring makes the vCPU wait (backpressure), never drops a change.
 * - The tracker releases entries (advances TAIL) only once the backend holds
 *   them: in its state (in-process) or durably (the `sevtrack serve`
 *   service answered), so a service killed meanwhile loses nothing the
 *   rings still hold.
 */

import { RuntimeFailure } from '../../common/errors.js';

const TICKET = 0;
const DOORBELL = 1;
const HEADER_WORDS = 4;
const RING_HEADER = 4;
const HEAD = 0;
const TAIL = 1;
const ENTRY_WORDS = 4;

/** Entries per vCPU ring (a power of two). */
export const DEFAULT_RING_CAPACITY = 4096;

export interface ExitRingsDescriptor {
  buffer: SharedArrayBuffer;
  vcpus: number;
  capacity: number;
}

/** One validated change as the tracker receives it. */
export interface RingChange {
  gfn: number;
  npages: number;
  encrypted: boolean;
  /** The vCPU whose ring held it. */
  vcpu: number;
}

/** What one take() collected, and where to release it up to. */
export interface TakenChanges {
  changes: RingChange[];
  mark: number[];
}

export function createExitRings(vcpus: number, capacity = DEFAULT_RING_CAPACITY): ExitRingsDescriptor {
  const words = HEADER_WORDS + vcpus * (RING_HEADER + capacity * ENTRY_WORDS);
  return { buffer: new SharedArrayBuffer(words * 4), vcpus, capacity };
}

function ringBase(d: ExitRingsDescriptor, vcpu: number): number {
  return HEADER_WORDS + vcpu * (RING_HEADER + d.capacity * ENTRY_WORDS);
}

/** The vCPU side of one ring (used on that vCPU's thread only). */
export class RingProducer {
  private readonly w: Int32Array;
  private readonly base: number;
  private readonly capacity: number;
  private head = 0;
  /** Times this vCPU waited on a full ring. */
  fullWaits = 0;

  constructor(d: ExitRingsDescriptor, vcpu: number) {
    this.w = new Int32Array(d.buffer);
    this.base = ringBase(d, vcpu);
    this.capacity = d.capacity;
    this.head = Atomics.load(this.w, this.base + HEAD);
  }

  /**
   * Appends one change; returns once it is published. Waits (Atomics.wait on
   * TAIL) while the ring is full, after ringing the doorbell.
   */
  push(gfn: number, npages: number, encrypted: boolean): void {
    const w = this.w;
    for (;;) {
      const tail = Atomics.load(w, this.base + TAIL);
      if ((this.head - tail) >>> 0 < this.capacity) break;
      this.fullWaits++;
      Atomics.add(w, DOORBELL, 1);
      Atomics.notify(w, DOORBELL);
      Atomics.wait(w, this.base + TAIL, tail, 50);
    }
    // Room is reserved: take the ticket and publish without waiting in between.
    const ticket = Atomics.add(w, TICKET, 1);
    const at = this.base + RING_HEADER + (this.head & (this.capacity - 1)) * ENTRY_WORDS;
    w[at] = ticket;
    w[at + 1] = gfn;
    w[at + 2] = npages;
    w[at + 3] = encrypted ? 1 : 0;
    this.head = (this.head + 1) | 0;
    Atomics.store(w, this.base + HEAD, this.head); // publish (sequentially consistent)
    const tail = Atomics.load(w, this.base + TAIL);
    if ((this.head - tail) >>> 0 === this.capacity >>> 1) {
      Atomics.add(w, DOORBELL, 1);
      Atomics.notify(w, DOORBELL);
    }
  }
}

/**
 * The tracker side of every ring of a VM (one thread). take() collects the
 * changes with tickets below the counter it reads, in ticket order;
 * release() hands their slots back to the vCPUs.
 */
export class RingConsumer {
  private readonly w: Int32Array;
  /** Next entry to take, per ring (ahead of TAIL while taken entries are in flight). */
  private readonly taken: number[];
  /** The first ticket not yet taken. */
  private next = 0;

  constructor(private readonly d: ExitRingsDescriptor) {
    this.w = new Int32Array(d.buffer);
    this.taken = Array.from({ length: d.vcpus }, (_, v) => Atomics.load(this.w, ringBase(d, v) + TAIL));
  }

  /** The doorbell's current value (the tracker waits for it to change). */
  get doorbell(): number {
    return Atomics.load(this.w, DOORBELL);
  }

  get doorbellWord(): { words: Int32Array; index: number } {
    return { words: this.w, index: DOORBELL };
  }

  /**
   * Every change whose ticket is below the counter at the time of the call,
   * in ticket order (rule: a sync drains every ring first; the caller calls
   * this at its start). Spins briefly for a ticket taken but not yet
   * published (the vCPU is between two stores). The changes stay in the
   * rings until release().
   */
  take(): TakenChanges {
    const end = Atomics.load(this.w, TICKET);
    const count = (end - this.next) >>> 0;
    if (count === 0) return { changes: [], mark: this.taken.slice() };
    const out: RingChange[] = new Array(count);
    let got = 0;
    let spins = 0;
    const cap = this.d.capacity;
    while (got < count) {
      if (++spins > 10_000_000)
        throw new RuntimeFailure(
          'ERR_RING',
          `exit ring: ticket ${this.next + got} was taken but never published`,
        );
      for (let v = 0; v < this.d.vcpus; v++) {
        const base = ringBase(this.d, v);
        const head = Atomics.load(this.w, base + HEAD);
        while (this.taken[v] !== head) {
          const at = base + RING_HEADER + (this.taken[v] & (cap - 1)) * ENTRY_WORDS;
          const rel = (this.w[at] - this.next) >>> 0;
          if (rel >= count) break; // taken after the counter was read: the next drain's
          out[rel] = {
            gfn: this.w[at + 1] >>> 0,
            npages: this.w[at + 2] >>> 0,
            encrypted: this.w[at + 3] === 1,
            vcpu: v,
          };
          this.taken[v] = (this.taken[v] + 1) | 0;
          got++;
        }
      }
    }
    this.next = end;
    return { changes: out, mark: this.taken.slice() };
  }

  /**
   * Hands the slots of a take() back (call once the backend holds those
   * changes, takes released in the order they were taken); wakes vCPUs
   * waiting on a full ring.
   */
  release(mark: readonly number[]): void {
    for (let v = 0; v < this.d.vcpus; v++) {
      const at = ringBase(this.d, v) + TAIL;
      if (Atomics.load(this.w, at) !== mark[v]) {
        Atomics.store(this.w, at, mark[v]);
        Atomics.notify(this.w, at);
      }
    }
  }

  /** Changes published but not yet released, over every ring. */
  get pending(): number {
    let n = 0;
    for (let v = 0; v < this.d.vcpus; v++) {
      const base = ringBase(this.d, v);
      n += (Atomics.load(this.w, base + HEAD) - Atomics.load(this.w, base + TAIL)) >>> 0;
    }
    return n;
  }
}
