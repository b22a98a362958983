/**
 * Integrity and bounded recovery of the host database with real `sevtrack
 * serve` processes (docs/host-protocol.md "Persistence"; issue items 6, 7):
 * a database altered outside sevtrack is refused at start (exit 2 naming
 * the piece) or by `sevtrack state --check` (exit 1); checkpoints are taken
 * continuously, so recovery replays a bounded tail of the log.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import type { StateRange } from '../../src/common/ranges.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { runCli } from '../support/cli.js';
import { spawnServe, startServe } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

const call = mapGpaRangeCall;

/** A database of vm 1 with ten committed segments of ten changes (seq 1..100); stopped by kill -9 or SIGTERM. */
async function tenSegments(stop: 'SIGKILL' | 'SIGTERM'): Promise<{ db: string; dir: string }> {
  const dir = tempDir();
  const db = join(dir, 'host.db');
  const serve = await startServe(db, join(dir, 'host.sock'), ['--quiet']);
  const c = await HostServiceClient.connect(join(dir, 'host.sock'));
  await c.registerVm(1, 4096);
  for (let s = 0; s < 10; s++) {
    await c.hypercallBatch(
      1,
      Array.from({ length: 10 }, (_, i) => call(s * 100 + i * 3, 2, false)),
    );
  }
  serve.child.kill(stop);
  await serve.exited;
  await c.close().catch(() => {});
  return { db, dir };
}

function tamper(db: string, sql: string, ...args: unknown[]): void {
  const raw = new Database(db);
  raw.prepare(sql).run(...args);
  raw.close();
}

function editRecords(db: string, firstSeq: number, edit: (records: Buffer) => void): void {
  const raw = new Database(db);
  const row = raw
    .prepare('SELECT records FROM change_segments WHERE vm = 1 AND first_seq = ?')
    .get(firstSeq) as {
    records: Buffer;
  };
  edit(row.records);
  raw
    .prepare('UPDATE change_segments SET records = ? WHERE vm = 1 AND first_seq = ?')
    .run(row.records, firstSeq);
  raw.close();
}

async function startRefused(db: string, dir: string): Promise<string> {
  const p = spawnServe(['--db', db, '--socket', join(dir, 'again.sock'), '--quiet']);
  const { code } = await p.exited;
  expect(code).toBe(2);
  return p.stderr();
}

describe('tampering is detected at start', () => {
  it('a deleted last segment', async () => {
    const { db, dir } = await tenSegments('SIGKILL');
    tamper(db, 'DELETE FROM change_segments WHERE vm = 1 AND first_seq = 91');
    expect(await startRefused(db, dir)).toMatch(
      /vm 1: the change log ends at seq 90, expected 100: segment\(s\) for seq 91\.\.100 are missing/,
    );
  });

  it('a deleted middle segment', async () => {
    const { db, dir } = await tenSegments('SIGKILL');
    tamper(db, 'DELETE FROM change_segments WHERE vm = 1 AND first_seq = 41');
    expect(await startRefused(db, dir)).toMatch(
      /segment at seq 51\.\.60 follows seq 40: segment\(s\) for seq 41\.\.50 are missing/,
    );
  });

  it('a flipped state bit', async () => {
    const { db, dir } = await tenSegments('SIGKILL');
    editRecords(db, 51, (r) => {
      r[7] ^= 0x80;
    });
    expect(await startRefused(db, dir)).toMatch(/change-log segment at seq 51\.\.60 fails its checksum/);
  });

  it('a moved gfn', async () => {
    const { db, dir } = await tenSegments('SIGKILL');
    editRecords(db, 21, (r) => {
      r.writeUInt32LE(r.readUInt32LE(16) + 1, 16);
    });
    expect(await startRefused(db, dir)).toMatch(/change-log segment at seq 21\.\.30 fails its checksum/);
  });

  it('an edited checkpoint', async () => {
    const { db, dir } = await tenSegments('SIGTERM');
    const raw = new Database(db);
    const row = raw
      .prepare('SELECT seq, state FROM checkpoints WHERE vm = 1 ORDER BY seq DESC LIMIT 1')
      .get() as {
      seq: number;
      state: Buffer;
    };
    expect(row.seq).toBe(100);
    row.state[40] ^= 1;
    raw.prepare('UPDATE checkpoints SET state = ? WHERE vm = 1 AND seq = 100').run(row.state);
    raw.close();
    expect(await startRefused(db, dir)).toMatch(/checkpoint at seq 100 fails its checksum/);
  });
});

describe('sevtrack state --check', () => {
  it('passes a sound database (exit 0) and names an altered segment that start does not read (exit 1)', async () => {
    const { db, dir } = await tenSegments('SIGTERM');
    const ok = await runCli(['state', '--db', db, '--check']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/vm 1: 100 changes in 10 segments, \d+ checkpoints, 0 syncs: ok/);
    editRecords(db, 21, (r) => {
      r[7] ^= 0x80;
    });
    // Start reads only from the newest checkpoint on: it still starts, serving the checkpointed state.
    const serve = await startServe(db, join(dir, 'b.sock'), ['--quiet']);
    serve.child.kill('SIGTERM');
    expect((await serve.exited).code).toBe(0);
    const bad = await runCli(['state', '--db', db, '--check', '--json']);
    expect(bad.code).toBe(1);
    const report = JSON.parse(bad.stdout) as { ok: boolean; vms: { problems: string[] }[] };
    expect(report.ok).toBe(false);
    expect(report.vms[0].problems.join('\n')).toMatch(/segment at seq 21\.\.30 fails its checksum/);
  });
});

describe('bounded recovery', () => {
  it('checkpoints are taken without syncs, so kill -9 after many changes replays a bounded tail and recovers the same state', async () => {
    const dir = tempDir();
    const db = join(dir, 'host.db');
    const socket = join(dir, 'host.sock');
    const serve = await startServe(db, socket, ['--quiet']);
    const c = await HostServiceClient.connect(socket);
    await c.registerVm(1, 1 << 20);
    const BATCH = 50_000;
    for (let b = 0; b < 6; b++) {
      await c.hypercallBatch(
        1,
        Array.from({ length: BATCH }, (_, i) => call((i * 7 + b) % 4000, 1 + (i % 3), (i + b) % 2 === 0)),
      );
    }
    const before = await c.queryRanges(1, 0, 100_000);
    serve.child.kill('SIGKILL');
    await serve.exited;
    await c.close().catch(() => {});
    const raw = new Database(db, { readonly: true });
    const head = (raw.prepare('SELECT head_seq FROM vms WHERE id = 1').get() as { head_seq: number })
      .head_seq;
    const ckpt = (
      raw.prepare('SELECT max(seq) AS seq FROM checkpoints WHERE vm = 1').get() as { seq: number }
    ).seq;
    raw.close();
    expect(head).toBe(6 * BATCH);
    // No sync ever happened; still the newest checkpoint is within one interval (65,536) plus a batch.
    expect(head - ckpt).toBeLessThan(65_536 + BATCH);
    const again = await startServe(db, socket, ['--quiet']);
    const d = await HostServiceClient.connect(socket);
    const after = await d.queryRanges(1, 0, 100_000);
    expect(after.ranges as StateRange[]).toEqual(before.ranges);
    expect((await d.queryVm(1)).lastSeq).toBe(head);
    await d.close();
    again.child.kill('SIGTERM');
    await again.exited;
  });
});
