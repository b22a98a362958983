/**
 * The host service's socket protocol (docs/host-protocol.md): frames of
 * src/common/frames.ts with magic "SVTK", version 1. A reply echoes the
 * request's id, has type (request type | 0x8000) and starts with the KVM
 * return code and a status; a non-zero status is followed by a message.
 */
import { type BinaryReader, BinaryWriter } from '../common/binary.js';
import type { FrameSpec } from '../common/frames.js';
import type { HypercallRegisters } from '../common/kvm-abi.js';
import type { StateRange } from '../common/ranges.js';

export const HOST_FRAME: FrameSpec = {
  what: 'host service frame',
  magic: 0x4b54_5653, // "SVTK"
  version: 1,
  maxPayload: 64 * 2 ** 20,
};

export const REPLY_FLAG = 0x8000;
/** Reply type for a frame whose own type could not be trusted, and for a disconnect reason. */
export const TYPE_PROTOCOL_ERROR = 0xffff;
/** An unsolicited notice (id 0): status SHUTTING_DOWN when the service starts draining. */
export const TYPE_NOTICE = 0xfffe;
/** Ranges in one page of a SYNC reply (SYNC or SYNC_NEXT): 65,536 × 24 bytes = 1.5 MiB. */
export const SYNC_PAGE_RANGES = 65_536;
/** Open SYNC cursors per connection; a new SYNC beyond it drops the oldest. */
export const MAX_CURSORS = 16;
/** Hypercalls in one HYPERCALL_BATCH at most. */
export const MAX_BATCH = 65_536;
/** Ranges in one QUERY_RANGES reply at most. */
export const MAX_QUERY_RANGES = 1_000_000;
/** Changes in one QUERY_CHANGES reply at most (65,536 × 32 bytes = 2 MiB). */
export const MAX_QUERY_CHANGES = 65_536;

export const MessageType = {
  REGISTER_VM: 1,
  HYPERCALL: 2,
  HYPERCALL_BATCH: 3,
  QUERY_VM: 4,
  QUERY_RANGES: 5,
  SYNC: 6,
  GET_MIGRATION_CONTROL: 7,
  SET_MIGRATION_CONTROL: 8,
  LIST_VMS: 9,
  UNREGISTER_VM: 10,
  SYNC_NEXT: 11,
  MIGRATION_BEGIN: 12,
  MIGRATION_END: 13,
  QUERY_CHANGES: 14,
} as const;
export type MessageTypeCode = (typeof MessageType)[keyof typeof MessageType];

export const Status = {
  OK: 0,
  BAD_FRAME: 1,
  UNKNOWN_TYPE: 2,
  BAD_PAYLOAD: 3,
  UNKNOWN_VM: 4,
  INVALID_ARGUMENT: 5,
  HYPERCALL_REJECTED: 6,
  INTERNAL: 7,
  SHUTTING_DOWN: 8,
  OVERLOADED: 9,
  UNKNOWN_CURSOR: 10,
} as const;

export function statusName(code: number): string {
  return Object.entries(Status).find(([, v]) => v === code)?.[0] ?? `status ${code}`;
}

/** One hypercall as a VMM sees it in struct kvm_run.hypercall. */
export type HypercallArgs = HypercallRegisters;

export interface VmSummary {
  npages: number;
  encryptedPages: number;
  sharedPages: number;
  rangeCount: number;
  lastSeq: number;
  lastSyncSeq: number;
  migrationControl: bigint;
  initialEncrypted: boolean;
}

export const HYPERCALL_BYTES = 32;
export const RANGE_BYTES = 24;

export function writeHypercall(w: BinaryWriter, h: HypercallArgs): void {
  w.u64(h.nr).u64(h.a0).u64(h.a1).u64(h.a2);
}

export function writeRanges(w: BinaryWriter, ranges: readonly StateRange[]): void {
  for (const x of ranges)
    w.u64(x.gfn)
      .u64(x.npages)
      .u32(x.encrypted ? 1 : 0)
      .u32(0);
}

/** A change-log entry on the wire: u64 seq, then a range entry. */
export function writeChanges(w: BinaryWriter, changes: readonly (StateRange & { seq: number })[]): void {
  for (const c of changes) {
    w.u64(c.seq);
    writeRanges(w, [c]);
  }
}

export function readChanges(r: BinaryReader, count: number): (StateRange & { seq: number })[] {
  const out: (StateRange & { seq: number })[] = [];
  for (let i = 0; i < count; i++) {
    const seq = r.u64n('change seq');
    out.push({ seq, ...readRanges(r, 1)[0] });
  }
  return out;
}

export function readRanges(r: BinaryReader, count: number): StateRange[] {
  const out: StateRange[] = [];
  for (let i = 0; i < count; i++) {
    const gfn = r.u64n('range gfn');
    const npages = r.u64n('range npages');
    const encrypted = r.u32('range state') === 1;
    r.zero32('range reserved');
    out.push({ gfn, npages, encrypted });
  }
  return out;
}

export function writeVmSummary(w: BinaryWriter, s: VmSummary): void {
  w.u64(s.npages)
    .u64(s.encryptedPages)
    .u64(s.sharedPages)
    .u64(s.rangeCount)
    .u64(s.lastSeq)
    .u64(s.lastSyncSeq)
    .u64(s.migrationControl)
    .u32(s.initialEncrypted ? 1 : 0)
    .u32(0);
}

export function readVmSummary(r: BinaryReader): VmSummary {
  const s = {
    npages: r.u64n('npages'),
    encryptedPages: r.u64n('encrypted pages'),
    sharedPages: r.u64n('shared pages'),
    rangeCount: r.u64n('range count'),
    lastSeq: r.u64n('last seq'),
    lastSyncSeq: r.u64n('last sync seq'),
    migrationControl: r.u64('migration control'),
    initialEncrypted: r.u32('flags') === 1,
  };
  r.zero32('reserved');
  return s;
}

/** The reply prefix: KVM return code and status (plus a message when status != OK). */
export function replyWriter(ret: number, status: number, message?: string): BinaryWriter {
  const w = new BinaryWriter();
  w.i32(ret).u16(status).u16(0);
  if (status !== Status.OK) {
    const text = Buffer.from(message ?? statusName(status), 'utf8');
    w.u32(text.length).bytes(text);
  }
  return w;
}
