/**
 * The integrity checksums of the change log (docs/host-protocol.md,
 * "Persistence"): each segment's CRC-32 covers its VM, first seq, count and
 * records, chained from the previous segment's CRC (0 before the first), so a
 * segment that is edited, moved or deleted breaks the chain; a checkpoint's
 * CRC-32 covers its VM, seq and state. The vms row keeps the chain's head
 * (seq and CRC), which catches a deleted last segment.
 */
import { zlib } from '../common/node-compat.js';

function header(vm: number, seq: number, count: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(vm, 0);
  h.writeUInt32LE(count, 4);
  h.writeBigUInt64LE(BigInt(seq), 8);
  return h;
}

/** The chained CRC of segment (firstSeq, count, records) of vm after a segment whose CRC is prev. */
export function segmentCrc(
  prev: number,
  vm: number,
  firstSeq: number,
  count: number,
  records: Uint8Array,
): number {
  return zlib.crc32(records, zlib.crc32(header(vm, firstSeq, count), prev));
}

/** The CRC of vm's checkpoint at seq holding the serialized state. */
export function checkpointCrc(vm: number, seq: number, state: Uint8Array): number {
  return zlib.crc32(state, zlib.crc32(header(vm, seq, 0)));
}
