/**
 * viewDigests split across worker threads for large guests (the digests are
 * on the critical path of downtime: computed at pause on the source and
 * before resume on the destination). The workers are started once, on first
 * use, and do not keep the process alive.
 */
import os from 'node:os';
import type { Worker } from 'node:worker_threads';
import { RuntimeFailure } from '../common/errors.js';
import { nativeAddon } from '../common/native.js';
import type { PageBitmap } from '../common/page-bitmap.js';
import { DIGEST_BYTES, viewDigests } from '../common/page-crypto.js';
import { startWorker } from '../common/worker-script.js';
import type { DigestJob } from './digest-worker.js';

/** Below this many pages one thread is faster than handing out work. */
export const PARALLEL_THRESHOLD = 32_768;

let workers: Worker[] | undefined;
let nextId = 1;
const waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

function pool(): Worker[] {
  if (!workers) {
    const n = Math.max(1, Math.min(4, os.availableParallelism()));
    workers = Array.from({ length: n }, () => {
      const w = startWorker(import.meta.url, './digest-worker.js', {});
      w.on('message', (m: { id: number; error?: string }) => {
        const entry = waiting.get(m.id);
        waiting.delete(m.id);
        if (waiting.size === 0) for (const x of workers ?? []) x.unref();
        if (m.error) entry?.reject(new RuntimeFailure('ERR_DIGEST', `digest worker failed: ${m.error}`));
        else entry?.resolve();
      });
      w.on('error', (e) => {
        for (const entry of waiting.values()) entry.reject(e);
        waiting.clear();
        workers = undefined;
      });
      // Idle digest workers must not keep the process alive (unref after the
      // listeners: adding a message listener refs the port again).
      w.unref();
      return w;
    });
  }
  return workers;
}

/** Starts the workers ahead of need (their start-up would otherwise land in the downtime). */
export function warmDigestWorkers(npages: number): void {
  if (npages >= PARALLEL_THRESHOLD) pool();
}

/**
 * SHA-256 of the guest view of every page (see viewDigests), in parallel when
 * the guest is large and its memory and c-bit table are shared buffers.
 */
export async function guestViewDigests(
  key: Uint8Array,
  memory: Uint8Array,
  cbits: Uint32Array,
  npages: number,
): Promise<Uint8Array> {
  const shared = memory.buffer instanceof SharedArrayBuffer && cbits.buffer instanceof SharedArrayBuffer;
  if (npages < PARALLEL_THRESHOLD || !shared || memory.byteOffset !== 0 || cbits.byteOffset !== 0) {
    return viewDigests(key, memory, cbits, 0, npages);
  }
  const out = new SharedArrayBuffer(npages * DIGEST_BYTES);
  const ws = pool();
  const per = Math.ceil(npages / ws.length);
  await Promise.all(
    ws.map((w, i) => {
      const firstGfn = i * per;
      const count = Math.min(per, npages - firstGfn);
      if (count <= 0) return Promise.resolve();
      const job: DigestJob = {
        id: nextId++,
        key,
        memory: memory.buffer as SharedArrayBuffer,
        cbits: cbits.buffer as SharedArrayBuffer,
        cbitsWords: cbits.length,
        out,
        firstGfn,
        npages: count,
      };
      return new Promise<void>((resolve, reject) => {
        waiting.set(job.id, { resolve, reject });
        // A job in flight keeps the process alive until it answers.
        w.ref();
        w.postMessage(job);
      });
    }),
  );
  return new Uint8Array(out);
}

/**
 * Brings digests taken earlier up to date: recomputes, in place, the pages
 * set in `changed` (written or converted since) under the current c-bits.
 */
export function refreshDigests(
  digests: Uint8Array,
  key: Uint8Array,
  memory: Uint8Array,
  cbits: Uint32Array,
  changed: PageBitmap,
): number {
  let n = 0;
  for (const run of changed.runs()) {
    const out = digests.subarray(run.gfn * DIGEST_BYTES, (run.gfn + run.npages) * DIGEST_BYTES);
    nativeAddon().viewDigests(key, memory, cbits, run.gfn, run.npages, out);
    n += run.npages;
  }
  return n;
}
