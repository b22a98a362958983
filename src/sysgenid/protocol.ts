/**
 * The sysgenid socket protocol (docs/sysgenid.md, "Wire format"): sevtrack's
 * frame header (common/frames.ts) with magic "SGID", version 1. One request
 * type per operation of the kernel proposal's file interface (read, write,
 * poll, the three ioctls) plus GET and two sevtrack extensions (SET_NAME,
 * LIST_WATCHERS) an overseer uses to say who acknowledged.
 *
 * Every reply echoes the request's id with type | REPLY_FLAG. Its payload
 * starts with an i32 status (0 or a Linux errno); an error carries a u32
 * length and a UTF-8 message after it, a success the type's body. Replies
 * may come out of order: a blocking READ or a WAIT_WATCHERS is answered when
 * its condition holds, while later requests on the same connection are
 * answered at once.
 */
import { type BinaryReader, BinaryWriter } from '../common/binary.js';
import type { FrameSpec } from '../common/frames.js';

export const SYSGENID_FRAME_MAGIC = 0x44494753; // "SGID"
export const SYSGENID_FRAME_VERSION = 1;

/** What the service accepts: requests are small, so a huge length is garbage. */
export const REQUEST_FRAME: FrameSpec = {
  what: 'sysgenid request',
  magic: SYSGENID_FRAME_MAGIC,
  version: SYSGENID_FRAME_VERSION,
  maxPayload: 4096,
};

/** What a client accepts: a watcher table of many watchers fits. */
export const REPLY_FRAME: FrameSpec = {
  what: 'sysgenid reply',
  magic: SYSGENID_FRAME_MAGIC,
  version: SYSGENID_FRAME_VERSION,
  maxPayload: 16 << 20,
};

export const REPLY_FLAG = 0x8000;
/** Sent (id 0) before the service closes a connection whose framing is lost. */
export const TYPE_PROTOCOL_ERROR = 0xffff;

export const Request = {
  GET: 1,
  READ: 2,
  WRITE: 3,
  POLL: 4,
  SET_TRACKING: 5,
  GET_OUTDATED: 6,
  WAIT_WATCHERS: 7,
  BUMP: 8,
  SET_NAME: 9,
  LIST_WATCHERS: 10,
} as const;

export const READ_NONBLOCK = 0x1;
export const POLLIN = 0x1;
export const MAX_NAME_BYTES = 64;
export const U32_MAX = 0xffffffff;

/** One row of LIST_WATCHERS. */
export interface WatcherInfo {
  /** The service's id of the connection, unique for the service's life. */
  id: number;
  /** SO_PEERCRED of the connecting process. */
  pid: number;
  uid: number;
  name: string;
  tracked: boolean;
  outdated: boolean;
  /** The generation the watcher is up to date with (opened at, or last acknowledged). */
  generation: number;
  /** True when `generation` came from an acknowledgement (a write), not from opening. */
  acknowledged: boolean;
}

const FLAG_TRACKED = 1;
const FLAG_OUTDATED = 2;
const FLAG_ACKNOWLEDGED = 4;

export function okReply(body?: (w: BinaryWriter) => void): Buffer {
  const w = new BinaryWriter(16).i32(0);
  body?.(w);
  return w.finish();
}

export function errorReply(status: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8');
  return new BinaryWriter(8 + text.length).i32(status).u32(text.length).bytes(text).finish();
}

export function writeWatcherTable(w: BinaryWriter, generation: number, rows: readonly WatcherInfo[]): void {
  w.u32(generation).u32(rows.length);
  for (const r of rows) {
    const name = Buffer.from(r.name, 'utf8');
    const flags =
      (r.tracked ? FLAG_TRACKED : 0) |
      (r.outdated ? FLAG_OUTDATED : 0) |
      (r.acknowledged ? FLAG_ACKNOWLEDGED : 0);
    w.u32(r.id).i32(r.pid).u32(r.uid).u8(flags).u8(0).u16(name.length).u32(r.generation).bytes(name);
  }
}

export function readWatcherTable(body: BinaryReader): { generation: number; watchers: WatcherInfo[] } {
  const generation = body.u32('generation');
  const count = body.u32('watcher count');
  const watchers: WatcherInfo[] = [];
  for (let i = 0; i < count; i++) {
    const id = body.u32('watcher id');
    const pid = body.i32('pid');
    const uid = body.u32('uid');
    const flags = body.u8('flags');
    body.u8('reserved');
    const nameBytes = body.u16('name length');
    const gen = body.u32('watcher generation');
    const name = body.bytes(nameBytes, 'name').toString('utf8');
    watchers.push({
      id,
      pid,
      uid,
      name,
      tracked: (flags & FLAG_TRACKED) !== 0,
      outdated: (flags & FLAG_OUTDATED) !== 0,
      generation: gen,
      acknowledged: (flags & FLAG_ACKNOWLEDGED) !== 0,
    });
  }
  body.end();
  return { generation, watchers };
}
