/**
 * Host ingest: durable c-bit changes per second on a 64 GiB guest with a
 * realistic mix (a boot storm of single pages, some 2 MiB and 64 MiB
 * ranges), in-process and through the socket (batches of 1 and 256), against
 * one SQLite row per page measured in the same run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import type { StateRange } from '../../src/common/ranges.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import type { HypercallArgs } from '../../src/host/service-protocol.js';
import { withServe } from '../../test/support/serve.js';
import { type BenchGroup, seededRandom } from '../harness.js';

export const GUEST_64G_PAGES = 16 * 2 ** 20;

/** The realistic mix: 97% single pages, 2.9% 2 MiB ranges, 0.1% 64 MiB ranges. */
export function realisticChanges(count: number, seed: number, npagesTotal = GUEST_64G_PAGES): StateRange[] {
  const rand = seededRandom(seed);
  const out: StateRange[] = [];
  for (let i = 0; i < count; i++) {
    const r = rand();
    const npages = r < 0.97 ? 1 : r < 0.999 ? 512 : 16384;
    const gfn = Math.floor(rand() * Math.floor((npagesTotal - npages) / npages)) * npages;
    out.push({ gfn, npages, encrypted: rand() < 0.5 });
  }
  return out;
}

function toHypercall(c: StateRange): HypercallArgs {
  return mapGpaRangeCall(c.gfn, c.npages, c.encrypted);
}

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** In-process: apply, and group-commit (one fsync) every `group` changes. */
function inProcess(
  dir: string,
  changes: StateRange[],
  group: number,
  synchronous: 'FULL' | 'NORMAL' = 'FULL',
): number {
  const store = CbitStore.open(join(dir, `inproc${group}${synchronous}.db`), { synchronous });
  store.registerVm(1, GUEST_64G_PAGES);
  const start = process.hrtime.bigint();
  for (let i = 0; i < changes.length; i += group) {
    store.applyBatch(1, changes.slice(i, i + group));
  }
  const rate = changes.length / seconds(start);
  store.close();
  return rate;
}

/** The baseline: one row per page (vm, gfn) -> state, upserted in transactions of 256 changes. */
function rowPerPage(dir: string, changes: StateRange[]): number {
  const db = new Database(join(dir, 'rows.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(
    'CREATE TABLE pages (vm INTEGER, gfn INTEGER, encrypted INTEGER, PRIMARY KEY (vm, gfn)) WITHOUT ROWID',
  );
  const upsert = db.prepare('INSERT OR REPLACE INTO pages VALUES (1, ?, ?)');
  const tx = db.transaction((batch: StateRange[]) => {
    for (const c of batch) for (let g = c.gfn; g < c.gfn + c.npages; g++) upsert.run(g, c.encrypted ? 1 : 0);
  });
  const start = process.hrtime.bigint();
  for (let i = 0; i < changes.length; i += 256) tx(changes.slice(i, i + 256));
  const rate = changes.length / seconds(start);
  db.close();
  return rate;
}

async function throughSocket(
  dir: string,
  changes: StateRange[],
  batch: number,
  window: number,
): Promise<number> {
  return withServe(join(dir, `sock${batch}.db`), join(dir, `s${batch}.sock`), async (client) => {
    await client.registerVm(1, GUEST_64G_PAGES);
    const calls = changes.map(toHypercall);
    const start = process.hrtime.bigint();
    const inflight = new Set<Promise<unknown>>();
    for (let i = 0; i < calls.length; i += batch) {
      const p: Promise<unknown> =
        batch === 1 ? client.hypercall(1, calls[i]) : client.hypercallBatch(1, calls.slice(i, i + batch));
      const tracked = p.finally(() => inflight.delete(tracked));
      inflight.add(tracked);
      if (inflight.size >= window) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    return calls.length / seconds(start);
  });
}

export const hostIngestGroup: BenchGroup = {
  name: 'host-ingest',
  description: 'durable c-bit changes/s on a 64 GiB guest (mixed sizes) vs one SQLite row per page',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const changes = realisticChanges(400_000, 11);
      const baseline = rowPerPage(dir, changes.slice(0, 20_000));
      const baselineName = 'row per page, tx of 256';
      for (const [group, synchronous] of [
        [256, 'FULL'],
        [4096, 'FULL'],
        [4096, 'NORMAL'],
      ] as const) {
        report({
          name: `ingest in-process, group commit of ${group}, synchronous=${synchronous}`,
          value: inProcess(dir, changes, group, synchronous),
          unit: 'changes/s',
          baseline,
          baselineName,
        });
      }
      report({
        name: 'ingest via socket, batches of 256 (8 in flight)',
        value: await throughSocket(dir, changes, 256, 8),
        unit: 'changes/s',
        baseline,
        baselineName,
      });
      report({
        name: 'ingest via socket, batches of 1 (256 in flight)',
        value: await throughSocket(dir, changes.slice(0, 60_000), 1, 256),
        unit: 'changes/s',
        baseline,
        baselineName,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
