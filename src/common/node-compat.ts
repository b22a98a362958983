/**
 * Node APIs newer than @types/node 20's baseline, typed once. zlib.crc32
 * exists from Node 20.15 (package.json requires 20.19).
 */
import * as nodeZlib from 'node:zlib';

interface Crc32 {
  crc32(data: Uint8Array | string, value?: number): number;
}

export const zlib = nodeZlib as typeof nodeZlib & Crc32;
