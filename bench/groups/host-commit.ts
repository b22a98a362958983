/**
 * Group commit across clients: acknowledged single changes per second when
 * 1, 8 and 64 clients each send one hypercall and wait for its ack (as vCPUs
 * do), against one fsync'd SQLite transaction per change on the same disk
 * (the rate without group commit), measured in the same run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { startServe } from '../../test/support/serve.js';
import type { BenchGroup } from '../harness.js';

const RUN_MS = 3000;

/** One fsync'd WAL transaction per change, in-process: the limit without group commit. */
function singleTransactionsPerSecond(dir: string): number {
  const db = new Database(join(dir, 'single.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE t (seq INTEGER PRIMARY KEY, gfn INTEGER, npages INTEGER)');
  const insert = db.prepare('INSERT INTO t (gfn, npages) VALUES (?, ?)');
  const one = db.transaction((i: number) => insert.run(i, 1));
  let n = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  do {
    one(n++);
    elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  } while (elapsed < RUN_MS / 2);
  db.close();
  return (n * 1000) / elapsed;
}

export const hostCommitGroup: BenchGroup = {
  name: 'host-commit',
  description: 'acknowledged single changes/s for 1, 8, 64 waiting clients vs one fsync per change',
  async run(report) {
    const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
    try {
      const limit = singleTransactionsPerSecond(dir);
      const socket = join(dir, 'host.sock');
      const serve = await startServe(join(dir, 'host.db'), socket, ['--quiet']);
      try {
        const admin = await HostServiceClient.connect(socket);
        await admin.registerVm(1, 2 ** 24);
        for (const clients of [1, 8, 64]) {
          const conns = await Promise.all(
            Array.from({ length: clients }, () => HostServiceClient.connect(socket)),
          );
          let acked = 0;
          const stopAt = Date.now() + RUN_MS;
          const start = process.hrtime.bigint();
          await Promise.all(
            conns.map(async (c, k) => {
              for (let i = 0; Date.now() < stopAt; i++) {
                await c.hypercall(1, mapGpaRangeCall(k * 65_536 + (i % 65_536), 1, i % 2 === 0));
                acked++;
              }
            }),
          );
          const seconds = Number(process.hrtime.bigint() - start) / 1e9;
          report({
            name: `acked single changes/s, ${clients} client(s) each waiting for its ack`,
            value: acked / seconds,
            unit: 'changes/s',
            baseline: limit,
            baselineName: "one fsync'd transaction per change",
          });
          await Promise.all(conns.map((c) => c.close()));
        }
        await admin.close();
      } finally {
        serve.child.kill('SIGTERM');
        await serve.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
