/**
 * The summary's downtimePhases say which paused step took the downtime: a
 * delay injected into one step shows in that phase and in no other, and the
 * phases add up to downtimeMs.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type FrameChannel, memoryChannelPair } from '../../src/migration/channel.js';
import { MigrationDestination } from '../../src/migration/destination.js';
import { DEFAULT_PARAMS } from '../../src/migration/run-migration.js';
import { type DowntimePhases, MigrationSource } from '../../src/migration/source.js';
import { MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import type { Tracker } from '../../src/migration/tracker.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { tempDir } from '../support/tmp.js';

const DELAY_MS = 300;
const stores: CbitStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});

type Step = keyof DowntimePhases;

/** Migrates a small scripted guest with DELAY_MS added to one paused step; returns the summary. */
async function migrateDelaying(step: Step) {
  const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
  stores.push(store);
  store.registerVm(1, 256);
  const guest = new ScriptedGuest(GuestMemory.create(256), store, 1, 5, { workingSet: 64 });
  for (let i = 0; i < 100; i++) guest.step();
  const [a, b] = memoryChannelPair(MIGRATION_FRAME);
  const delayIf = async (when: boolean) => {
    if (when) await sleep(DELAY_MS);
  };
  // The source's host reads while paused: its tracker's sync.
  const tracker: Tracker = {
    sync: async (vm) => {
      await delayIf(step === 'readsMs' && guest.paused);
      return store.sync(vm);
    },
    info: (vm) => store.info(vm),
    snapshot: (vm) => store.snapshot(vm),
    migrationControl: (vm) => store.migrationControl(vm),
  };
  const channel: FrameChannel = {
    ...a,
    send: async (type, payload) => {
      await delayIf(step === 'stateMs' && type === Msg.CBIT_STATE);
      return a.send(type, payload);
    },
    next: async (t, e) => {
      const f = await a.next(t, e);
      await delayIf(
        (step === 'pagesMs' && f.type === Msg.ROUND_ACK && guest.paused) ||
          (step === 'destinationMs' && f.type === Msg.RESULT),
      );
      return f;
    },
  };
  const destination = new MigrationDestination({ channel: b, peerTimeoutMs: 5000 }).run();
  const source = new MigrationSource({
    ...DEFAULT_PARAMS,
    log: undefined,
    guest,
    store: tracker,
    vm: 1,
    channel,
    psp: DEFAULT_PARAMS.psp,
    batchPages: 16,
  });
  const summary = await source.run();
  await destination;
  return summary;
}

describe('downtime phases', () => {
  it.each<Step>(['readsMs', 'pagesMs', 'stateMs', 'destinationMs'])(
    'a slow %s shows in that phase alone, and the phases add up to the downtime',
    async (step) => {
      const s = await migrateDelaying(step);
      expect(s.verified).toBe(true);
      const phases = s.downtimePhases;
      expect(phases[step]).toBeGreaterThanOrEqual(DELAY_MS - 1);
      for (const [name, ms] of Object.entries(phases)) {
        expect(ms, name).toBeGreaterThanOrEqual(0);
        // Relative, not a wall-clock bound: a stall on a loaded machine may slow any step.
        if (name !== step) expect(ms, name).toBeLessThan(phases[step] / 2);
      }
      const sum = Object.values(phases).reduce((x, y) => x + y, 0);
      expect(sum).toBeCloseTo(s.downtimeMs, 6);
    },
  );
});
