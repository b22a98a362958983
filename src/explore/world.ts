/**
 * The explorer's world: a few guest pages, 1-4 vCPUs, the host tracker and
 * the destination, with one method per primitive event of the race
 * (docs/design.md §3). Nothing here decides an order: the scheduler (or a
 * replay of a recorded migration) calls these in the order it wants, and the
 * protocol module (protocol.ts) calls the host's.
 *
 * Guest events, per vCPU (rule 5's three steps for a conversion):
 *   convertTable  the vCPU flips the page's entry in the guest's own c-bit
 *                 table (guest memory, so it travels); its notification is
 *                 now in flight,
 *   arrive        the notification reaches the host tracker: full state and
 *                 change log (rule 1) — before the call returns (§5),
 *   ret           the hypercall returns to the vCPU,
 *   write         a write of fresh data under the table's c-bit; sets the
 *                 page's dirty bit.
 * Host events: harvest (read and clear the dirty log), sync (consume every
 * change that has arrived: the delta against the last sync and a copy of
 * the full state), send (one page from a perspective), pause, cbitState.
 */
import { data, guestRead, guestWrite, type Term, termShape, transfer } from './sev-model.js';

/** Where a vCPU is in a conversion. */
export const IDLE = 0;
/** The table changed; the notification has not reached the host. */
export const IN_FLIGHT = 1;
/** The host has the change; the call has not returned yet. */
export const ARRIVED = 2;

/** What happened, in the vocabulary a migration log records (docs/migration-log.md). */
export type ModelEvent =
  | { kind: 'convert'; vcpu: number; gfn: number; encrypted: boolean }
  | { kind: 'arrive'; vcpu: number; gfn: number; encrypted: boolean; seq: number }
  | { kind: 'return'; vcpu: number; gfn: number }
  | { kind: 'write'; vcpu: number; gfn: number; encrypted: boolean; data: number }
  | { kind: 'harvest'; round: number; gfns: number[] }
  | { kind: 'sync'; round: number; seq: number; delta: number[] }
  | { kind: 'send'; round: number; gfn: number; encrypted: boolean; data: number; why: SendReason }
  | { kind: 'pause'; round: number; inFlight: { vcpu: number; gfn: number }[] }
  | { kind: 'cbit-state'; round: number; encrypted: number[] };

/** Why a page is in a round's send set. */
export type SendReason = 'first round' | 'dirty' | 'c-bit changed' | 'dirty, c-bit changed';

export interface SyncResult {
  /** Pages whose host state differs from the state at the previous sync. */
  delta: number[];
  /** The full host state now (1 = encrypted); a copy the caller owns. */
  state: Uint8Array;
}

export class World {
  readonly npages: number;
  readonly vcpus: number;
  /** The guest's own c-bit table (1 = encrypted); guest memory, so it travels. */
  readonly table: Uint8Array;
  /** Source memory as the host sees it. */
  readonly raw: Term[];
  /** The data number last written to each page. */
  readonly current: Int32Array;
  /** Written since its last conversion (the `defined` verification compares only these). */
  readonly defined: Uint8Array;
  /** The dirty log: set by guest writes, cleared by a harvest. */
  readonly dirty: Uint8Array;
  /** The host tracker's full c-bit state (rule 1). */
  readonly hostState: Uint8Array;
  /** The host state at the last sync. */
  readonly synced: Uint8Array;
  /** Sequence number of the last change that arrived. */
  seq = 0;
  readonly phase: Uint8Array;
  readonly convGfn: Int32Array;
  readonly opsLeft: Int32Array;
  /** Destination memory, null until a page first arrives. */
  readonly dest: (Term | null)[];
  /** Perspective (1 = encrypted), round and data number of each page's last send; -1 = never sent. */
  readonly sentAs: Int8Array;
  readonly sentRound: Int32Array;
  readonly sentData: Int32Array;
  paused = false;
  /** The source guest's view of every page at pause, and which pages were defined then. */
  pauseView: Term[] | null = null;
  pauseDefined: Uint8Array | null = null;
  nextData: number;
  /** Receives every event when set (timelines, tests); left unset on the hot path. */
  onEvent: ((e: ModelEvent) => void) | undefined;

  /**
   * A world where page g starts encrypted when g is even and shared when odd,
   * holding data number g written under that c-bit; the host tracker agrees.
   * With `from`, a copy of that world instead (see clone()).
   */
  constructor(npages: number, vcpus: number, opsPerVcpu: number, from?: World) {
    this.npages = npages;
    this.vcpus = vcpus;
    if (from) {
      // A copy (clone()): every field listed, so the object keeps one shape.
      this.table = from.table.slice();
      this.raw = from.raw.slice();
      this.current = from.current.slice();
      this.defined = from.defined.slice();
      this.dirty = from.dirty.slice();
      this.hostState = from.hostState.slice();
      this.synced = from.synced.slice();
      this.seq = from.seq;
      this.phase = from.phase.slice();
      this.convGfn = from.convGfn.slice();
      this.opsLeft = from.opsLeft.slice();
      this.dest = from.dest.slice();
      this.sentAs = from.sentAs.slice();
      this.sentRound = from.sentRound.slice();
      this.sentData = from.sentData.slice();
      this.paused = from.paused;
      this.pauseView = from.pauseView;
      this.pauseDefined = from.pauseDefined;
      this.nextData = from.nextData;
      this.onEvent = from.onEvent;
      return;
    }
    this.table = new Uint8Array(npages);
    this.raw = [];
    this.current = new Int32Array(npages);
    this.defined = new Uint8Array(npages).fill(1);
    this.dirty = new Uint8Array(npages);
    for (let g = 0; g < npages; g++) {
      this.table[g] = g % 2 === 0 ? 1 : 0;
      this.raw.push(guestWrite('source', this.table[g] === 1, data(g)));
      this.current[g] = g;
    }
    this.hostState = this.table.slice();
    this.synced = this.table.slice();
    this.phase = new Uint8Array(vcpus);
    this.convGfn = new Int32Array(vcpus).fill(-1);
    this.opsLeft = new Int32Array(vcpus).fill(opsPerVcpu);
    this.dest = new Array<Term | null>(npages).fill(null);
    this.sentAs = new Int8Array(npages).fill(-1);
    this.sentRound = new Int32Array(npages).fill(-1);
    this.sentData = new Int32Array(npages).fill(-1);
    this.nextData = npages;
    this.onEvent = undefined;
  }

  /** An independent copy (the exhaustive search branches with it). */
  clone(): World {
    return new World(this.npages, this.vcpus, 0, this);
  }

  /** The vCPU converting `gfn` (table flipped, call not yet returned), or -1. */
  converter(gfn: number): number {
    for (let v = 0; v < this.vcpus; v++) if (this.phase[v] !== IDLE && this.convGfn[v] === gfn) return v;
    return -1;
  }

  /** Whether some vCPU is inside a conversion (between its table step and its return). */
  anyConverting(): boolean {
    for (let v = 0; v < this.vcpus; v++) if (this.phase[v] !== IDLE) return true;
    return false;
  }

  // ---- guest events ----

  convertTable(vcpu: number, gfn: number): void {
    this.table[gfn] ^= 1;
    this.defined[gfn] = 0;
    this.phase[vcpu] = IN_FLIGHT;
    this.convGfn[vcpu] = gfn;
    this.opsLeft[vcpu]--;
    this.onEvent?.({ kind: 'convert', vcpu, gfn, encrypted: this.table[gfn] === 1 });
  }

  /** The notification reaches the tracker, which records it with the next sequence number. */
  arrive(vcpu: number): void {
    const gfn = this.convGfn[vcpu];
    this.hostState[gfn] = this.table[gfn];
    this.seq++;
    this.phase[vcpu] = ARRIVED;
    this.onEvent?.({ kind: 'arrive', vcpu, gfn, encrypted: this.hostState[gfn] === 1, seq: this.seq });
  }

  ret(vcpu: number): void {
    const gfn = this.convGfn[vcpu];
    this.phase[vcpu] = IDLE;
    this.convGfn[vcpu] = -1;
    this.onEvent?.({ kind: 'return', vcpu, gfn });
  }

  write(vcpu: number, gfn: number): void {
    const id = this.nextData++;
    this.raw[gfn] = guestWrite('source', this.table[gfn] === 1, data(id));
    this.current[gfn] = id;
    this.defined[gfn] = 1;
    this.dirty[gfn] = 1;
    this.opsLeft[vcpu]--;
    this.onEvent?.({ kind: 'write', vcpu, gfn, encrypted: this.table[gfn] === 1, data: id });
  }

  // ---- host events ----

  /** Reads and clears the dirty log; returns a 0/1 array the caller owns. */
  harvest(round: number): Uint8Array {
    const d = this.dirty.slice();
    this.dirty.fill(0);
    if (this.onEvent) this.onEvent({ kind: 'harvest', round, gfns: gfnsOf(d) });
    return d;
  }

  /** Consumes every change that has arrived (rule 1's sync). */
  sync(round: number): SyncResult {
    const delta: number[] = [];
    for (let g = 0; g < this.npages; g++) if (this.hostState[g] !== this.synced[g]) delta.push(g);
    this.synced.set(this.hostState);
    this.onEvent?.({ kind: 'sync', round, seq: this.seq, delta });
    return { delta, state: this.hostState.slice() };
  }

  /** Sends one page as it is now in source memory, from the perspective `encrypted`. */
  send(round: number, gfn: number, encrypted: boolean, why: SendReason): void {
    this.dest[gfn] = transfer(encrypted, this.raw[gfn]);
    this.sentAs[gfn] = encrypted ? 1 : 0;
    this.sentRound[gfn] = round;
    this.sentData[gfn] = this.current[gfn];
    this.onEvent?.({ kind: 'send', round, gfn, encrypted, data: this.current[gfn], why });
  }

  /** Stops the guest and records what it reads from every page (the reference for verification). */
  pause(round: number): void {
    this.paused = true;
    this.pauseView = this.raw.map((t, g) => guestRead('source', this.table[g] === 1, t));
    this.pauseDefined = this.defined.slice();
    if (this.onEvent) {
      const inFlight: { vcpu: number; gfn: number }[] = [];
      for (let v = 0; v < this.vcpus; v++)
        if (this.phase[v] === IN_FLIGHT) inFlight.push({ vcpu: v, gfn: this.convGfn[v] });
      this.onEvent({ kind: 'pause', round, inFlight });
    }
  }

  /** The full c-bit state goes to the destination (it does not change what the guest reads there). */
  cbitState(round: number, state: Uint8Array): void {
    this.onEvent?.({ kind: 'cbit-state', round, encrypted: gfnsOf(state) });
  }

  /** A string that is equal for two worlds exactly when they behave alike from here on. */
  key(): string {
    let k = `${this.paused ? 'P' : 'R'}`;
    for (let g = 0; g < this.npages; g++) {
      const dest = this.dest[g];
      k += `|${this.table[g]}${this.hostState[g]}${this.synced[g]}${this.dirty[g]}${this.defined[g]}`;
      k += `${termShape(this.raw[g], this.current[g])},${dest ? termShape(dest, this.current[g]) : '-'}`;
    }
    for (let v = 0; v < this.vcpus; v++) k += `|${this.phase[v]}${this.convGfn[v]},${this.opsLeft[v]}`;
    return k;
  }
}

/** The gfns set to 1 in a 0/1 array. */
export function gfnsOf(bits: Uint8Array): number[] {
  const out: number[] = [];
  for (let g = 0; g < bits.length; g++) if (bits[g]) out.push(g);
  return out;
}
