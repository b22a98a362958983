import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DatabaseFormatError, InvalidArgumentError, UnknownVmError } from '../../src/common/errors.js';
import {
  encodeAttributes,
  KVM_EINVAL,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MIGRATION_READY,
} from '../../src/common/kvm-abi.js';
import type { StateRange } from '../../src/common/ranges.js';
import { CbitStore, touchedWindows } from '../../src/host/cbit-store.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { SCHEMA_VERSION } from '../../src/host/schema.js';
import { tempDir } from '../support/tmp.js';

const dbPath = () => join(tempDir(), 'cbit.db');

describe('CbitStore basics', () => {
  it('registers a VM all encrypted, applies hypercalls, syncs deltas and persists', () => {
    const path = dbPath();
    const store = CbitStore.open(path);
    store.registerVm(7, 1024);
    expect(store.info(7)).toMatchObject({ encryptedPages: 1024, sharedPages: 0, lastSeq: 0, lastSyncSeq: 0 });
    const r = store.applyHypercall(7, KVM_HC_MAP_GPA_RANGE, 0x10_000, 16, encodeAttributes(false));
    expect(r).toMatchObject({ ret: 0, seq: 1 });
    store.commit();
    const s1 = store.sync(7);
    expect(s1).toMatchObject({ seq: 1, previousSeq: 0, delta: [{ gfn: 16, npages: 16, encrypted: false }] });
    // Flip back and forth: the net delta since the last sync is empty.
    store.applyChange(7, { gfn: 20, npages: 2, encrypted: true });
    store.applyChange(7, { gfn: 20, npages: 2, encrypted: false });
    store.applyChange(7, { gfn: 100, npages: 1, encrypted: false });
    const s2 = store.sync(7);
    expect(s2.seq).toBe(4);
    expect(s2.delta).toEqual([{ gfn: 100, npages: 1, encrypted: false }]);
    expect(s2.state.sharedCount).toBe(17);
    store.applyChange(7, { gfn: 100, npages: 1, encrypted: true });
    expect(s2.state.isEncrypted(100)).toBe(false); // the snapshot is independent
    store.close();

    const again = CbitStore.open(path);
    expect(again.info(7)).toMatchObject({ lastSeq: 5, lastSyncSeq: 4, sharedPages: 16, logLength: 5 });
    expect(again.sync(7).delta).toEqual([{ gfn: 100, npages: 1, encrypted: true }]);
    expect([...again.changes(7, 3)].map((c) => c.seq)).toEqual([4, 5]);
    again.close();
  });

  it('rejects an invalid hypercall with the KVM code and changes nothing', () => {
    const store = CbitStore.open(dbPath());
    store.registerVm(1, 256);
    const r = store.applyHypercall(1, KVM_HC_MAP_GPA_RANGE, 0x1003, 1, 0);
    expect(r).toMatchObject({ ret: -KVM_EINVAL, field: 'a0' });
    expect(store.applyHypercall(1, KVM_HC_MAP_GPA_RANGE, 255 * 4096, 2, 0)).toMatchObject({
      ret: -KVM_EINVAL,
      field: 'a1',
    });
    expect(store.info(1)).toMatchObject({ lastSeq: 0, sharedPages: 0 });
    store.close();
  });

  it('names the problem for unknown VMs, duplicate ids and bad sizes', () => {
    const store = CbitStore.open(dbPath());
    expect(() => store.applyChange(9, { gfn: 0, npages: 1, encrypted: false })).toThrow(UnknownVmError);
    store.registerVm(1, 10);
    expect(() => store.registerVm(1, 10)).toThrow(/vm 1 is already registered/);
    expect(() => store.registerVm(2, 0)).toThrow(/npages 0/);
    expect(() => store.registerVm(-1, 10)).toThrow(/vm id -1/);
    expect(() => store.stateAt(1, 5)).toThrow(/seq 5 must be from 0/);
    expect(() => store.applyChange(1, { gfn: 9, npages: 2, encrypted: false })).toThrow(InvalidArgumentError);
    expect(store.info(1).lastSeq).toBe(0);
    store.close();
  });

  it('keeps migration control, refusing undefined bits', () => {
    const path = dbPath();
    const store = CbitStore.open(path);
    store.registerVm(1, 10);
    store.setMigrationControl(1, KVM_MIGRATION_READY);
    expect(() => store.setMigrationControl(1, 2n)).toThrow(/only KVM_MIGRATION_READY/);
    store.close();
    const again = CbitStore.open(path);
    expect(again.migrationControl(1)).toBe(KVM_MIGRATION_READY);
    again.close();
  });

  it('loses uncommitted changes, and only those, when the process dies before commit', () => {
    const path = dbPath();
    const store = CbitStore.open(path);
    store.registerVm(1, 100);
    store.applyBatch(1, [{ gfn: 1, npages: 1, encrypted: false }]);
    store.applyChange(1, { gfn: 2, npages: 1, encrypted: false }); // never committed
    // A second handle sees only what was committed (as a restart would).
    const other = CbitStore.open(path);
    expect(other.info(1)).toMatchObject({ lastSeq: 1, sharedPages: 1 });
    other.close();
  });

  it('recovers through checkpoints: state after many syncs equals a replay', () => {
    const path = dbPath();
    const store = CbitStore.open(path, { checkpointInterval: 10 });
    store.registerVm(3, 5000);
    const model = new PageStateMap(5000);
    let x = 1;
    for (let round = 0; round < 8; round++) {
      for (let i = 0; i < 7; i++) {
        x = (x * 48271) % 2147483647;
        const c = { gfn: x % 4990, npages: 1 + (x % 9), encrypted: x % 3 === 0 };
        store.applyChange(3, c);
        model.apply(c.gfn, c.npages, c.encrypted);
      }
      if (round % 2 === 0) store.sync(3);
      store.commit();
    }
    store.close();
    const again = CbitStore.open(path, { checkpointInterval: 10 });
    expect(again.state(3).equals(model)).toBe(true);
    const db = new Database(path, { readonly: true });
    const ckpts = (db.prepare('SELECT count(*) AS n FROM checkpoints').get() as { n: number }).n;
    db.close();
    expect(ckpts).toBeGreaterThan(1);
    again.close();
  });
});

describe('CbitStore: sync deltas and stateAt against a replay of the log', () => {
  it('for any sequence of changes and syncs', () => {
    const op = fc.oneof(
      {
        weight: 5,
        arbitrary: fc.record({
          gfn: fc.nat(199),
          npages: fc.integer({ min: 1, max: 40 }),
          encrypted: fc.boolean(),
        }),
      },
      { weight: 1, arbitrary: fc.constant('sync' as const) },
      { weight: 1, arbitrary: fc.constant('commit' as const) },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), fc.boolean(), (ops, initial) => {
        const store = CbitStore.open(dbPath(), { checkpointInterval: 7 });
        store.registerVm(1, 240, { initialEncrypted: initial });
        const log: StateRange[] = [];
        const fromDeltas = new PageStateMap(240, initial);
        for (const o of ops) {
          if (o === 'sync') {
            for (const d of store.sync(1).delta) fromDeltas.apply(d.gfn, d.npages, d.encrypted);
          } else if (o === 'commit') {
            store.commit();
          } else {
            store.applyChange(1, o);
            log.push(o);
          }
        }
        for (const d of store.sync(1).delta) fromDeltas.apply(d.gfn, d.npages, d.encrypted);
        expect(fromDeltas.equals(store.state(1))).toBe(true);
        for (let seq = 0; seq <= log.length; seq++) {
          const replayed = new PageStateMap(240, initial);
          for (const c of log.slice(0, seq)) replayed.apply(c.gfn, c.npages, c.encrypted);
          expect(store.stateAt(1, seq).equals(replayed)).toBe(true);
          const patched = replayed.clone();
          for (const d of store.diffSince(1, seq)) patched.apply(d.gfn, d.npages, d.encrypted);
          expect(patched.equals(store.state(1))).toBe(true);
        }
        store.close();
      }),
      { numRuns: 40 },
    );
  });
});

describe('touchedWindows', () => {
  it('merges overlapping and adjacent pairs into disjoint ascending windows', () => {
    expect(touchedWindows(100, [10, 5, 0, 2, 2, 3, 14, 1, 30, 1, 99, 1])).toEqual([
      { gfn: 0, npages: 5 },
      { gfn: 10, npages: 5 },
      { gfn: 30, npages: 1 },
      { gfn: 99, npages: 1 },
    ]);
  });
});

describe('CbitStore refuses databases it does not own', () => {
  it('a file that is not SQLite, leaving it unchanged', () => {
    const path = dbPath();
    writeFileSync(path, 'this is not a database, just text that is long enough to look like a header...');
    const before = readFileSync(path);
    expect(() => CbitStore.open(path)).toThrow(DatabaseFormatError);
    expect(() => CbitStore.open(path)).toThrow(/not an SQLite database/);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('an SQLite database of another application', () => {
    const path = dbPath();
    const db = new Database(path);
    db.exec('CREATE TABLE t (x)');
    db.close();
    expect(() => CbitStore.open(path)).toThrow(/not a sevtrack database/);
    const check = new Database(path);
    expect(check.prepare("SELECT name FROM sqlite_schema WHERE type='table'").all()).toEqual([{ name: 't' }]);
    check.close();
  });

  it('a newer schema', () => {
    const path = dbPath();
    CbitStore.open(path).close();
    const db = new Database(path);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    expect(() => CbitStore.open(path)).toThrow(new RegExp(`schema version ${SCHEMA_VERSION + 1} is newer`));
  });
});
