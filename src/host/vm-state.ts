/**
 * The in-memory record of one tracked VM: its full c-bit state, the changes
 * applied but not yet committed, the last sync's snapshot and the frames
 * touched since it. CbitStore owns these records; the change log, syncs and
 * recovery modules read and update them under the contracts stated there.
 */
import { InvalidArgumentError } from '../common/errors.js';
import type { GpaRangeChange } from '../common/kvm-abi.js';
import type { PageRange } from '../common/ranges.js';
import { SegmentWriter } from './change-segment.js';
import { MAX_GUEST_PAGES, PageStateMap } from './page-state-map.js';

export interface VmInfo {
  id: number;
  npages: number;
  initialEncrypted: boolean;
  migrationControl: bigint;
  encryptedPages: number;
  sharedPages: number;
  rangeCount: number;
  /** Sequence number of the newest change (0 = none). */
  lastSeq: number;
  /** Sequence number of the newest sync (0 = none yet). */
  lastSyncSeq: number;
  /** Number of changes in the log. */
  logLength: number;
}

export type HypercallOutcome =
  | { ret: 0; seq: number; change: GpaRangeChange }
  | { ret: number; seq?: undefined; field: string; message: string };

export interface Vm {
  id: number;
  npages: number;
  initialEncrypted: boolean;
  migrationControl: bigint;
  /** The full state after change lastSeq (committed or not). */
  state: PageStateMap;
  lastSeq: number;
  /** The newest change that is durable; pending holds (committedSeq, lastSeq]. */
  committedSeq: number;
  /** The CRC of the segment ending at committedSeq (the chain head, segment-chain.ts). */
  headCrc: number;
  pending: SegmentWriter;
  lastSyncSeq: number;
  lastSyncState: PageStateMap;
  /** The frames changed since the last sync, to bound the sync's diff. */
  touched: TouchedSet;
  /** Sequence number of the newest checkpoint of the full state. */
  checkpointSeq: number;
}

/** A fresh record of a VM whose durable state is `state` at seq `seq`, synced at `lastSyncSeq`. */
export function newVm(
  fields: Omit<Vm, 'pending' | 'committedSeq' | 'touched' | 'headCrc'> & {
    touched?: TouchedSet;
    headCrc?: number;
  },
): Vm {
  return {
    ...fields,
    headCrc: fields.headCrc ?? 0,
    committedSeq: fields.lastSeq,
    pending: new SegmentWriter(),
    touched: fields.touched ?? new TouchedSet(fields.npages),
  };
}

/** Validates REGISTER_VM arguments; throws InvalidArgumentError naming the field. */
export function checkRegistration(id: number, npages: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff) {
    throw new InvalidArgumentError('vm', `vm id ${id} must be an integer from 0 to 2^32-1`);
  }
  if (!Number.isInteger(npages) || npages < 1 || npages > MAX_GUEST_PAGES) {
    throw new InvalidArgumentError(
      'npages',
      `npages ${npages} must be an integer from 1 to 2^52 (guest size / 4 KiB)`,
    );
  }
}

export function vmInfo(vm: Vm): VmInfo {
  return {
    id: vm.id,
    npages: vm.npages,
    initialEncrypted: vm.initialEncrypted,
    migrationControl: vm.migrationControl,
    encryptedPages: vm.state.encryptedCount,
    sharedPages: vm.state.sharedCount,
    rangeCount: vm.state.rangeCount,
    lastSeq: vm.lastSeq,
    lastSyncSeq: vm.lastSyncSeq,
    logLength: vm.lastSeq,
  };
}

/** (gfn, npages) pairs buffered before they are folded into the window map. */
const TOUCHED_FOLD_PAIRS = 32_768;

/**
 * The frames changed since the last sync. Recording a change is one push
 * onto a flat array; every TOUCHED_FOLD_PAIRS changes the array is folded
 * into a range map of touched frames, so the memory is bounded by the number
 * of distinct touched ranges (at most the guest's fragmentation), never by
 * the number of changes. `all` (after recovery) means "unknown: diff all".
 */
export class TouchedSet {
  private pairs: number[] = [];
  private folded: PageStateMap | undefined;
  private all: boolean;
  /** Changes recorded (each add(), before merging). */
  count = 0;

  constructor(
    private readonly npages: number,
    all = false,
  ) {
    this.all = all;
  }

  add(gfn: number, npages: number): void {
    if (this.all) return;
    this.count++;
    this.pairs.push(gfn, npages);
    if (this.pairs.length >= 2 * TOUCHED_FOLD_PAIRS) this.fold();
  }

  private fold(): void {
    this.folded ??= new PageStateMap(this.npages, false);
    const p = this.pairs;
    for (let i = 0; i < p.length; i += 2) this.folded.apply(p[i], p[i + 1], true);
    this.pairs = [];
  }

  /** The touched frames as disjoint ascending windows; undefined = every frame. */
  windows(): PageRange[] | undefined {
    if (this.all) return undefined;
    this.fold();
    const out: PageRange[] = [];
    for (const r of this.folded!.ranges()) if (r.encrypted) out.push({ gfn: r.gfn, npages: r.npages });
    return out;
  }
}

/**
 * Merges (gfn, npages) pairs into disjoint, ascending windows, by marking them
 * in a scratch map (cheaper than sorting the pairs).
 */
export function touchedWindows(npages: number, pairs: readonly number[]): PageRange[] {
  const set = new TouchedSet(npages);
  for (let i = 0; i < pairs.length; i += 2) set.add(pairs[i], pairs[i + 1]);
  return set.windows()!;
}
