/**
 * A digest worker: computes viewDigests for a slice of a guest's pages over
 * shared memory, so the two halves of a large guest are hashed on two cores
 * while the migration waits at pause.
 */
import { parentPort } from 'node:worker_threads';
import { nativeAddon } from '../common/native.js';

export interface DigestJob {
  id: number;
  key: Uint8Array;
  memory: SharedArrayBuffer;
  cbits: SharedArrayBuffer;
  cbitsWords: number;
  out: SharedArrayBuffer;
  firstGfn: number;
  npages: number;
}

parentPort!.on('message', (job: DigestJob) => {
  try {
    const out = new Uint8Array(job.out, job.firstGfn * 32, job.npages * 32);
    nativeAddon().viewDigests(
      job.key,
      new Uint8Array(job.memory),
      new Uint32Array(job.cbits, 0, job.cbitsWords),
      job.firstGfn,
      job.npages,
      out,
    );
    parentPort!.postMessage({ id: job.id });
  } catch (err) {
    parentPort!.postMessage({ id: job.id, error: (err as Error).message });
  }
});
