/**
 * Soak: several clients stream single and batched hypercalls (and syncs) to
 * a real `sevtrack serve` that is killed with SIGKILL (or drained with
 * SIGTERM) at random moments and restarted, for a bounded time
 * (SEVTRACK_SOAK_SECONDS, default 20, at most 60). Final check: every
 * acknowledged change is in the log under its acknowledged seq, the log
 * holds nothing that was not sent, and the full integrity check passes.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { randomInt, seededRandom } from '../../src/common/rng.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { checkDatabase } from '../../src/host/integrity.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { type ServeProcess, startServe } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

const SECONDS = Math.min(60, Number(process.env.SEVTRACK_SOAK_SECONDS ?? 20));
const CLIENTS = 4;
const NPAGES = 1 << 16;

interface Change {
  gfn: number;
  npages: number;
  encrypted: boolean;
}
const key = (c: Change) => `${c.gfn}:${c.npages}:${c.encrypted ? 1 : 0}`;

describe('soak: random kills and restarts under several clients', () => {
  it(`holds every acknowledged change and nothing else (${SECONDS} s)`, {
    timeout: (SECONDS + 40) * 1000,
  }, async () => {
    const rng = seededRandom(20261201);
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const socket = join(dir, 'host.sock');
    const sent = new Set<string>();
    const acked = new Map<number, Change>();
    let kills = 0;
    let terms = 0;
    let registered = false;
    const deadline = Date.now() + SECONDS * 1000;

    const nextChange = (): Change => {
      const npages = 1 + randomInt(rng, 8);
      return { gfn: randomInt(rng, NPAGES - npages), npages, encrypted: rng() < 0.5 };
    };
    const toCall = (c: Change) => mapGpaRangeCall(c.gfn, c.npages, c.encrypted);

    /** One client's stream until its connection dies. */
    async function stream(client: HostServiceClient): Promise<void> {
      for (;;) {
        const roll = rng();
        if (roll < 0.45) {
          const c = nextChange();
          sent.add(key(c));
          const r = await client.hypercall(1, toCall(c));
          acked.set(r.seq!, c);
        } else if (roll < 0.95) {
          const batch = Array.from({ length: 1 + randomInt(rng, 64) }, nextChange);
          for (const c of batch) sent.add(key(c));
          const replies = await client.hypercallBatch(1, batch.map(toCall));
          for (const [i, r] of replies.entries()) acked.set(r.seq!, batch[i]);
        } else {
          await client.sync(1);
        }
      }
    }

    while (Date.now() < deadline) {
      const serve: ServeProcess = await startServe(db, socket, ['--quiet', '--drain-timeout', '1']);
      const clients = await Promise.all(
        Array.from({ length: CLIENTS }, () => HostServiceClient.connect(socket)),
      );
      if (!registered) {
        await clients[0].registerVm(1, NPAGES);
        registered = true;
      }
      const streams = clients.map((c) => stream(c).catch(() => {}));
      await new Promise((r) => setTimeout(r, 300 + randomInt(rng, 1200)));
      if ((kills + terms) % 3 !== 2) {
        serve.child.kill('SIGKILL');
        kills++;
      } else {
        serve.child.kill('SIGTERM');
        terms++;
      }
      await serve.exited;
      await Promise.all(streams);
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
    }

    const report = checkDatabase(db);
    expect(report.vms[0]?.problems ?? ['no vm']).toEqual([]);
    const store = CbitStore.open(db, { readonly: true });
    const log = [...store.changes(1)];
    store.close();
    expect(log.map((c) => c.seq)).toEqual(Array.from({ length: log.length }, (_, i) => i + 1));
    const bySeq = new Map(log.map((c) => [c.seq, c]));
    for (const [seq, c] of acked) expect(bySeq.get(seq), `acked seq ${seq}`).toEqual({ seq, ...c });
    for (const c of log) expect(sent.has(key(c)), `logged seq ${c.seq} was never sent`).toBe(true);
    expect(kills + terms).toBeGreaterThan(1);
    expect(acked.size).toBeGreaterThan(1000);
    process.stderr.write(
      `soak: ${kills} kill -9, ${terms} SIGTERM, ${acked.size} acknowledged changes, ${log.length} logged, 0 lost, 0 invented\n`,
    );
  });
});
