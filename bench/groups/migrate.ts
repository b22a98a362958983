/**
 * End-to-end migration: pages/s for an all-encrypted and an all-shared
 * guest, against this machine's raw AES-256-GCM sealing and memcpy
 * throughput measured in the same run (the ratios are the figures), and the
 * downtime of a mixed-workload guest at 256 MiB and 2 GiB.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sealPages } from '../../src/common/page-crypto.js';
import { GuestMemory } from '../../src/guest/guest-memory.js';
import { ScriptedGuest } from '../../src/guest/scripted-guest.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { DEFAULT_PARAMS, migrateGuest, migrateLocally } from '../../src/migration/run-migration.js';
import type { BenchGroup } from '../harness.js';

const NPAGES = 65536; // 256 MiB

async function e2eRate(encrypted: boolean, dir: string): Promise<number> {
  const store = CbitStore.open(join(dir, `e2e-${encrypted}.db`), { synchronous: 'NORMAL' });
  store.registerVm(1, NPAGES, { initialEncrypted: encrypted });
  const memory = GuestMemory.create(NPAGES, { encrypted });
  const guest = new ScriptedGuest(memory, store, 1, 1, { opsPerTick: 0 });
  const start = process.hrtime.bigint();
  const { summary } = await migrateGuest({ ...DEFAULT_PARAMS }, guest, store, 1);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  store.close();
  if (!summary.verified) throw new Error('benchmark migration failed verification');
  return summary.pagesSent / seconds;
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
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const gcm = rawGcmRate();
      const copy = memcpyRate();
      report({
        name: 'migrate 256 MiB all-encrypted guest',
        value: await e2eRate(true, dir),
        unit: 'pages/s',
        baseline: gcm,
        baselineName: 'raw AES-256-GCM seal, 1 core',
      });
      report({
        name: 'migrate 256 MiB all-shared guest',
        value: await e2eRate(false, dir),
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
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
