/**
 * Framing shared by sevtrack's wire protocols (the host service socket and
 * the migration stream): a 20-byte little-endian header, then the payload.
 *
 *   0  u32 magic        (per protocol)
 *   4  u16 version
 *   6  u16 type
 *   8  u32 id           (request id, echoed in the reply; stream sequence)
 *  12  u32 length       (payload bytes, at most the protocol's maximum)
 *  16  u32 crc32        (CRC-32 of the payload)
 *
 * A bad magic or an oversized length loses the framing (the connection must
 * close); a bad CRC or version leaves it intact (the frame is skipped and the
 * connection survives).
 */
import { zlib } from './node-compat.js';

export const FRAME_HEADER_BYTES = 20;

export interface Frame {
  version: number;
  type: number;
  id: number;
  payload: Buffer;
}

export interface FrameSpec {
  /** Name used in messages, e.g. "host service frame". */
  what: string;
  magic: number;
  version: number;
  maxPayload: number;
}

/** A problem with one frame. `fatal` means the framing is lost. */
export interface FrameProblem {
  fatal: boolean;
  /** The frame's id where the header could be read, else 0. */
  id: number;
  type: number;
  message: string;
}

export function encodeFrame(spec: FrameSpec, type: number, id: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  out.writeUInt32LE(spec.magic, 0);
  out.writeUInt16LE(spec.version, 4);
  out.writeUInt16LE(type, 6);
  out.writeUInt32LE(id >>> 0, 8);
  out.writeUInt32LE(payload.length, 12);
  out.writeUInt32LE(zlib.crc32(payload), 16);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/**
 * Splits a byte stream into frames. push() returns the complete frames and
 * problems found so far; after a fatal problem it returns nothing more.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private dead = false;
  /** Absolute offset of the next unread byte in the stream, for messages. */
  private streamOffset = 0;

  constructor(private readonly spec: FrameSpec) {}

  /** Bytes received but not yet returned as a frame (a partial frame); at most header + maxPayload. */
  get pending(): number {
    return this.buffered;
  }

  push(chunk: Buffer): (Frame | FrameProblem)[] {
    if (this.dead) return [];
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: (Frame | FrameProblem)[] = [];
    while (this.buffered >= FRAME_HEADER_BYTES) {
      const head = this.peek(FRAME_HEADER_BYTES);
      const magic = head.readUInt32LE(0);
      const version = head.readUInt16LE(4);
      const type = head.readUInt16LE(6);
      const id = head.readUInt32LE(8);
      const length = head.readUInt32LE(12);
      if (magic !== this.spec.magic) {
        this.dead = true;
        out.push({
          fatal: true,
          id: 0,
          type,
          message: `${this.spec.what}: expected magic 0x${this.spec.magic.toString(16)} at offset ${this.streamOffset}, got 0x${magic.toString(16)}`,
        });
        return out;
      }
      if (length > this.spec.maxPayload) {
        this.dead = true;
        out.push({
          fatal: true,
          id,
          type,
          message: `${this.spec.what}: payload length ${length} at offset ${this.streamOffset + 12} exceeds the maximum ${this.spec.maxPayload}`,
        });
        return out;
      }
      if (this.buffered < FRAME_HEADER_BYTES + length) break;
      const whole = this.take(FRAME_HEADER_BYTES + length);
      const payload = whole.subarray(FRAME_HEADER_BYTES);
      const at = this.streamOffset;
      this.streamOffset += whole.length;
      const crc = whole.readUInt32LE(16);
      if (version !== this.spec.version) {
        out.push({
          fatal: false,
          id,
          type,
          message: `${this.spec.what}: expected version ${this.spec.version} at offset ${at + 4}, got ${version}`,
        });
      } else if (zlib.crc32(payload) !== crc) {
        out.push({
          fatal: false,
          id,
          type,
          message: `${this.spec.what}: payload CRC-32 mismatch in the frame at offset ${at} (expected 0x${zlib.crc32(payload).toString(16)}, got 0x${crc.toString(16)})`,
        });
      } else {
        out.push({ version, type, id, payload });
      }
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0];
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }
}

export function isFrame(x: Frame | FrameProblem): x is Frame {
  return 'payload' in x;
}
