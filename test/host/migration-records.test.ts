import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BinaryWriter } from '../../src/common/binary.js';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient, ServiceRejectedError } from '../../src/host/service-client.js';
import { MessageType, Status } from '../../src/host/service-protocol.js';
import { HostService } from '../../src/host/service-server.js';
import { tempDir } from '../support/tmp.js';

const call = (gfn: number, encrypted: boolean) => mapGpaRangeCall(gfn, 1, encrypted);

const running: { service: HostService; store: CbitStore; clients: HostServiceClient[] }[] = [];

async function startService(path?: string) {
  const dir = tempDir();
  const db = path ?? join(dir, 'host.db');
  const store = CbitStore.open(db);
  const socketPath = join(dir, 'host.sock');
  const service = await HostService.start({ store, socketPath });
  const entry = { service, store, clients: [] as HostServiceClient[] };
  running.push(entry);
  const connect = async () => {
    const c = await HostServiceClient.connect(socketPath);
    entry.clients.push(c);
    return c;
  };
  return { db, store, service, connect };
}

afterEach(async () => {
  for (const e of running.splice(0)) {
    for (const c of e.clients) await c.close();
    await e.service.stop();
    e.store.close();
  }
});

/** Resolves once cond() holds, checking after each event-loop turn. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

describe('migration records (MIGRATION_BEGIN / MIGRATION_END)', () => {
  it('records the destination, every sync taken while open, and the outcome', async () => {
    const { store, connect } = await startService();
    const c = await connect();
    await c.registerVm(3, 1024);
    await c.hypercallBatch(3, [call(1, false), call(2, false)]);
    await c.sync(3); // before the migration: not part of its record
    const id = await c.migrationBegin(3, 'tcp 10.0.0.2:7000');
    await c.hypercall(3, call(5, false));
    const s1 = await c.sync(3);
    const s2 = await c.sync(3); // nothing new: the same seq, still a sync of the migration
    await c.hypercall(3, call(5, true));
    const s3 = await c.sync(3);
    await c.migrationEnd(id, 'verified', 'all pages equal');
    await c.sync(3); // after the end: not recorded
    const [m] = store.migrationRecords(3);
    expect(m).toMatchObject({
      id,
      vm: 3,
      destination: 'tcp 10.0.0.2:7000',
      startSeq: 2,
      outcome: 'verified',
      message: 'all pages equal',
    });
    expect(m.endedAt).not.toBeNull();
    expect(m.syncs.map((s) => [s.n, s.seq])).toEqual([
      [1, s1.seq],
      [2, s2.seq],
      [3, s3.seq],
    ]);
    // The VM is free for its next migration.
    const next = await c.migrationBegin(3, 'unix /run/dest.sock');
    expect(next).toBeGreaterThan(id);
    expect(store.openMigration(3)).toBe(next);
  });

  it('refuses a second open migration, an unknown or ended id and a bad outcome, changing nothing', async () => {
    const { store, connect } = await startService();
    const c = await connect();
    await c.registerVm(1, 64);
    const id = await c.migrationBegin(1, 'somewhere');
    await expect(c.migrationBegin(1, 'elsewhere')).rejects.toThrow(
      new RegExp(`vm 1 already has migration ${id} open`),
    );
    await expect(c.migrationBegin(9, 'x')).rejects.toBeInstanceOf(ServiceRejectedError);
    await expect(c.migrationBegin(1, '')).rejects.toThrow(/destination is 0 bytes/);
    await expect(c.migrationEnd(id + 1, 'aborted', 'x')).rejects.toThrow(/does not exist/);
    const bad = new BinaryWriter().u64(id).u32(7).u32(0).finish();
    const r = await c.rawRequest(MessageType.MIGRATION_END, bad);
    expect(r.status).toBe(Status.INVALID_ARGUMENT);
    expect(r.message).toMatch(/outcome 7 must be 1 \(verified\)/);
    const truncated = await c.rawRequest(
      MessageType.MIGRATION_BEGIN,
      new BinaryWriter().u32(1).u32(40).finish(),
    );
    expect(truncated.status).toBe(Status.BAD_PAYLOAD);
    expect(store.migrationRecords(1)).toHaveLength(1);
    expect(store.migrationRecords(1)[0].outcome).toBeNull();
    await c.migrationEnd(id, 'aborted', 'the destination went away');
    await expect(c.migrationEnd(id, 'verified', 'late')).rejects.toThrow(/already ended \(aborted\)/);
    expect(store.migrationRecords(1)[0]).toMatchObject({
      outcome: 'aborted',
      message: 'the destination went away',
    });
  });

  it('ends a migration abandoned when its client disconnects, and one left open by a crash as interrupted', async () => {
    const { store, connect, db } = await startService();
    const a = await connect();
    await a.registerVm(1, 64);
    await a.registerVm(2, 64);
    const abandoned = await a.migrationBegin(1, 'd1');
    await a.close();
    await until(() => store.openMigration(1) === undefined);
    expect(store.migrationRecords(1)[0]).toMatchObject({ id: abandoned, outcome: 'abandoned' });
    expect(store.migrationRecords(1)[0].message).toMatch(/connection closed before MIGRATION_END/);

    // A record left open in the database (the service died with it) is closed at the next open.
    const b = await connect();
    const open = await b.migrationBegin(2, 'd2');
    await b.sync(2);
    const copy = join(tempDir(), 'copy.db');
    store.commit();
    const { default: Database } = await import('better-sqlite3');
    const live = new Database(db, { readonly: true });
    await live.backup(copy);
    live.close();
    const reopened = CbitStore.open(copy);
    try {
      const [m] = reopened.migrationRecords(2);
      expect(m).toMatchObject({ id: open, outcome: 'interrupted' });
      expect(m.syncs).toHaveLength(1);
      expect(reopened.openMigration(2)).toBeUndefined();
    } finally {
      reopened.close();
    }
  });

  it("UNREGISTER_VM forgets the VM's migration records", async () => {
    const { store, connect } = await startService();
    const c = await connect();
    await c.registerVm(4, 64);
    const id = await c.migrationBegin(4, 'd');
    await c.sync(4);
    await c.migrationEnd(id, 'verified', 'ok');
    await c.unregisterVm(4);
    await c.registerVm(4, 64);
    expect(store.migrationRecords(4)).toEqual([]);
  });
});

describe('QUERY_CHANGES', () => {
  it('returns the committed changes in (after, upto] page by page, and refuses a range past the log', async () => {
    const { connect } = await startService();
    const c = await connect();
    await c.registerVm(2, 1 << 20);
    const calls = Array.from({ length: 70_000 }, (_, i) => call(i % 1000, i % 3 === 0));
    for (let i = 0; i < calls.length; i += 10_000) await c.hypercallBatch(2, calls.slice(i, i + 10_000));
    const all = await c.changes(2, 0, 70_000); // two pages (65,536 + 4,464)
    expect(all).toHaveLength(70_000);
    expect(all[0]).toEqual({ seq: 1, gfn: 0, npages: 1, encrypted: true });
    expect(all[69_999]).toEqual({ seq: 70_000, gfn: 999, npages: 1, encrypted: true });
    expect(all.every((x, i) => x.seq === i + 1 && x.gfn === i % 1000)).toBe(true);
    expect(await c.changes(2, 500, 503)).toEqual([
      { seq: 501, gfn: 500, npages: 1, encrypted: false },
      { seq: 502, gfn: 501, npages: 1, encrypted: true },
      { seq: 503, gfn: 502, npages: 1, encrypted: false },
    ]);
    expect(await c.changes(2, 7, 7)).toEqual([]);
    await expect(c.changes(2, 0, 70_001)).rejects.toThrow(/must lie within the log \(0, 70000\]/);
    await expect(c.changes(2, 9, 8)).rejects.toThrow(/after seq <= upto seq/);
    const r = await c.rawRequest(
      MessageType.QUERY_CHANGES,
      new BinaryWriter().u32(2).u32(0).u64(0).u64(1).finish(),
    );
    expect(r.status).toBe(Status.INVALID_ARGUMENT);
    expect(r.message).toMatch(/max changes 0 must be from 1 to 65536/);
  });
});
