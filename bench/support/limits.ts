/**
 * The limits the migration figures are divided by, measured in the same run:
 * the per-page work of a migration (the transport's XTS decrypt, GCM seal, GCM
 * open, XTS encrypt, and the verification digest on both sides; or for a
 * shared page two copies and the two digests) done by the native tight loop
 * `pipelineLimit` on every core, over pre-faulted buffers (so first-touch
 * faults count against the engine, not the limit).
 */
import os from 'node:os';
import { nativeAddon } from '../../src/common/native.js';

/** The verification digest the engine computes: the view MAC (viewMacs), taken in the seal or copy pass. */
export const ENGINE_DIGEST: 'sha256' | 'mac' = 'mac';

/** 64 MiB per thread: well beyond the caches, like a guest. */
const PAGES_PER_THREAD = 16_384;

export interface PageLimits {
  /** Pages/s, all cores: an encrypted page's whole per-page work. */
  encrypted: number;
  /** Pages/s, all cores: a shared page's whole per-page work. */
  shared: number;
  cores: number;
}

export function measurePageLimits(digest: 'sha256' | 'mac' | 'none' = ENGINE_DIGEST): PageLimits {
  const cores = Math.max(1, Math.min(os.availableParallelism(), 64));
  const best = (encrypted: boolean) => {
    let rate = 0;
    for (let i = 0; i < 3; i++) {
      rate = Math.max(rate, nativeAddon().pipelineLimit(encrypted, digest, PAGES_PER_THREAD, 1, cores));
    }
    return rate;
  };
  return { encrypted: best(true), shared: best(false), cores };
}

/** The limit for a mix of pages: the per-page times add up (pages/s for sealed + raw pages). */
export function mixedLimit(limits: PageLimits, sealedPages: number, rawPages: number): number {
  const seconds = sealedPages / limits.encrypted + rawPages / limits.shared;
  return (sealedPages + rawPages) / seconds;
}
