/**
 * The native levers of the migration's per-page work, each against the path
 * the engine used before it, on the same pages in the same run (ratio =
 * speed-up), and the per-page limit with each digest.
 *
 * - view MAC (GMAC) vs SHA-256 for the verification digests of a guest;
 * - sealing straight into a reused frame vs gather into a fresh buffer, seal
 *   into another, wipe, and copy into the frame;
 * - opening straight into guest memory vs copy out of the frame, open into a
 *   fresh buffer, scatter, wipe;
 * - shared pages copied natively into a reused frame vs a copy per page from
 *   JavaScript into a fresh buffer, then into the frame.
 */
import { PageBitmap } from '../../src/common/page-bitmap.js';
import {
  copyPagesToFrame,
  newMemoryKey,
  openFrameToPages,
  openPages,
  SEALED_PAGE_BYTES,
  sealPages,
  sealPagesToFrame,
  viewDigests,
  viewMacs,
  xtsEncryptPages,
  xtsGather,
  xtsScatter,
} from '../../src/common/page-crypto.js';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import type { BenchGroup } from '../harness.js';
import { measurePageLimits } from '../support/limits.js';

const NPAGES = 16_384; // 64 MiB
const BATCH = 256;
const HEADER = 24 + BATCH * 8; // a PAGES frame's header and gfn list

function batches(): Float64Array[] {
  const out: Float64Array[] = [];
  for (let g = 0; g < NPAGES; g += BATCH) out.push(Float64Array.from({ length: BATCH }, (_, i) => g + i));
  return out;
}

const pagesPerSecond = (ms: number) => NPAGES / (ms / 1000);

/**
 * Best (least) CPU time (user + system, this process; the benchmark runs
 * nothing else meanwhile) in ms of the old and the new path, run alternately
 * after one warm-up each. CPU time rather than wall time: on a machine shared
 * with other tenants a wall-clock figure measures their load as much as the
 * work, while page faults and copies still count as system time.
 */
function bestOfInterleaved(old: () => void, neu: () => void, rounds = 5): [number, number] {
  const time = (fn: () => void) => {
    const start = process.cpuUsage();
    fn();
    const used = process.cpuUsage(start);
    return (used.user + used.system) / 1000;
  };
  old();
  neu();
  let a = Number.POSITIVE_INFINITY;
  let b = Number.POSITIVE_INFINITY;
  for (let i = 0; i < rounds; i++) {
    a = Math.min(a, time(old));
    b = Math.min(b, time(neu));
  }
  return [a, b];
}

export const pipelineGroup: BenchGroup = {
  name: 'pipeline',
  description: 'native per-page levers vs the paths they replace (64 MiB, 1 core, CPU time)',
  run(report) {
    const xtsKey = newMemoryKey();
    const dstKey = newMemoryKey();
    const gcmKey = new Uint8Array(32).fill(9);
    const macKey = new Uint8Array(16).fill(3);
    const memory = new Uint8Array(NPAGES * PAGE_SIZE).fill(0x5a);
    xtsEncryptPages(xtsKey, memory, memory, 0, NPAGES);
    const cbits = new PageBitmap(NPAGES);
    cbits.setRange(0, NPAGES);
    const list = batches();

    const [sha, mac] = bestOfInterleaved(
      () => viewDigests(xtsKey, memory, cbits.words, 0, NPAGES),
      () => viewMacs(xtsKey, macKey, memory, cbits.words, 0, NPAGES),
    );
    report({
      name: 'verification digests of encrypted pages: view MAC',
      value: pagesPerSecond(mac),
      unit: 'pages/s',
      baseline: pagesPerSecond(sha),
      baselineName: 'XTS + SHA-256 (viewDigests)',
    });

    // Seal: the engine's path before (PspSession.sendUpdateData + encodePages).
    const oldSealRun = () => {
      for (const gfns of list) {
        const plain = new Uint8Array(gfns.length * PAGE_SIZE);
        xtsGather(xtsKey, false, memory, plain, gfns);
        const sealed = new Uint8Array(gfns.length * SEALED_PAGE_BYTES);
        sealPages(
          gcmKey,
          plain,
          sealed,
          gfns.map((g) => g * PAGE_SIZE),
          0,
        );
        plain.fill(0);
        const frame = Buffer.allocUnsafe(HEADER + sealed.length);
        frame.set(sealed, HEADER);
      }
    };
    const frames = list.map(() => new Uint8Array(HEADER + BATCH * SEALED_PAGE_BYTES));
    const newSealRun = () => {
      for (let i = 0; i < list.length; i++) {
        sealPagesToFrame(xtsKey, gcmKey, memory, list[i], i * BATCH, frames[i], HEADER);
      }
    };
    const [oldSeal, newSeal] = bestOfInterleaved(oldSealRun, newSealRun);
    report({
      name: 'seal 256-page batches straight into the frame',
      value: pagesPerSecond(newSeal),
      unit: 'pages/s',
      baseline: pagesPerSecond(oldSeal),
      baselineName: 'gather, seal, wipe, copy into frame',
    });

    const dst = new Uint8Array(NPAGES * PAGE_SIZE);
    dst.fill(1);
    const oldOpenRun = () => {
      list.forEach((gfns, i) => {
        const data = new Uint8Array(frames[i].subarray(HEADER)); // decodePages copies the data out
        const plain = new Uint8Array(gfns.length * PAGE_SIZE);
        openPages(
          gcmKey,
          data,
          plain,
          gfns.map((g) => g * PAGE_SIZE),
          i * BATCH,
        );
        xtsScatter(dstKey, true, plain, dst, gfns);
        plain.fill(0);
      });
    };
    const newOpenRun = () => {
      list.forEach((gfns, i) => {
        if (openFrameToPages(gcmKey, dstKey, frames[i], HEADER, gfns, i * BATCH, dst) !== -1) {
          throw new Error('benchmark frame failed to open');
        }
      });
    };
    const [oldOpen, newOpen] = bestOfInterleaved(oldOpenRun, newOpenRun);
    report({
      name: 'open 256-page batches straight into guest memory',
      value: pagesPerSecond(newOpen),
      unit: 'pages/s',
      baseline: pagesPerSecond(oldOpen),
      baselineName: 'copy out, open, scatter, wipe',
    });

    const oldRawRun = () => {
      for (const gfns of list) {
        const data = new Uint8Array(gfns.length * PAGE_SIZE);
        for (let i = 0; i < gfns.length; i++) {
          data.set(memory.subarray(gfns[i] * PAGE_SIZE, (gfns[i] + 1) * PAGE_SIZE), i * PAGE_SIZE);
        }
        Buffer.allocUnsafe(HEADER + data.length).set(data, HEADER);
      }
    };
    const rawFrame = new Uint8Array(HEADER + BATCH * PAGE_SIZE);
    const newRawRun = () => {
      for (const gfns of list) copyPagesToFrame(memory, gfns, rawFrame, HEADER);
    };
    const [oldRaw, newRaw] = bestOfInterleaved(oldRawRun, newRawRun);
    report({
      name: 'shared pages into a reused frame (native copy)',
      value: pagesPerSecond(newRaw),
      unit: 'pages/s',
      baseline: pagesPerSecond(oldRaw),
      baselineName: 'copy per page from JS, then into frame',
    });

    const sha256 = measurePageLimits('sha256');
    const macs = measurePageLimits('mac');
    for (const kind of ['encrypted', 'shared'] as const) {
      report({
        name: `per-page limit, ${kind} page, view MAC digests (${macs.cores} cores)`,
        value: macs[kind],
        unit: 'pages/s',
        baseline: sha256[kind],
        baselineName: 'the same with SHA-256 digests',
      });
    }
  },
};
