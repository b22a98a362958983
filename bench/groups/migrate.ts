/**
 * End-to-end migration (the `sevtrack migrate` path, destination on its own
 * thread): pages/s for an all-encrypted and an all-shared idle guest, against this machine's raw AES-256-GCM sealing and memcpy
 * throughput measured in the same run (the ratios are the figures), and the
 * downtime of a mixed-workload guest at 256 MiB and 2 GiB.
 */
import { sealPages } from '../../src/common/page-crypto.js';
import { DEFAULT_PARAMS, migrateLocally } from '../../src/migration/run-migration.js';
import type { BenchGroup } from '../harness.js';

const NPAGES = 65536; // 256 MiB

/**
 * An idle guest (all private or all shared) migrated by the main job's path;
 * the time is the migration's own (handshake to verdict), not the guest's
 * start-up.
 */
async function e2eRate(encrypted: boolean): Promise<number> {
  const { summary } = await migrateLocally({
    ...DEFAULT_PARAMS,
    workload: 'idle',
    warmupMs: 0,
    guestEncrypted: encrypted,
  });
  if (!summary.verified) throw new Error('benchmark migration failed verification');
  return summary.pagesSent / (summary.totalMs / 1000);
}

function rawGcmRate(): number {
  const key = new Uint8Array(32).fill(7);
  const batch = 256;
  const src = new Uint8Array(batch * 4096);
  const dst = new Uint8Array(batch * 4112);
  const gpas = Float64Array.from({ length: batch }, (_, i) => i * 4096);
  let pages = 0;
  const start = process.hrtime.bigint();
  while (pages < NPAGES) {
    sealPages(key, src, dst, gpas, pages);
    pages += batch;
  }
  return pages / (Number(process.hrtime.bigint() - start) / 1e9);
}

function memcpyRate(): number {
  const src = Buffer.alloc(NPAGES * 4096, 1);
  const dst = Buffer.alloc(NPAGES * 4096);
  src.copy(dst);
  const start = process.hrtime.bigint();
  for (let i = 0; i < 4; i++) src.copy(dst);
  return (4 * NPAGES) / (Number(process.hrtime.bigint() - start) / 1e9);
}

export const migrateGroup: BenchGroup = {
  name: 'migrate',
  description: 'end-to-end migration throughput and downtime',
  async run(report) {
    const gcm = rawGcmRate();
    const copy = memcpyRate();
    report({
      name: 'migrate 256 MiB all-encrypted guest',
      value: await e2eRate(true),
      unit: 'pages/s',
      baseline: gcm,
      baselineName: 'raw AES-256-GCM seal, 1 core',
    });
    report({
      name: 'migrate 256 MiB all-shared guest',
      value: await e2eRate(false),
      unit: 'pages/s',
      baseline: copy,
      baselineName: 'memcpy',
    });
    for (const [label, bytes] of [
      ['256 MiB', 256 * 2 ** 20],
      ['2 GiB', 2 * 2 ** 30],
    ] as const) {
      const { summary } = await migrateLocally({ ...DEFAULT_PARAMS, memoryBytes: bytes });
      report({
        name: `downtime, ${label} mixed guest (ms, lower is better; ${summary.rounds} rounds)`,
        value: summary.downtimeMs,
        unit: 'ms',
        baseline: DEFAULT_PARAMS.maxDowntimeMs,
        baselineName: '--max-downtime target',
      });
    }
  },
};
