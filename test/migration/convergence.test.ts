import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CbitStore } from '../../src/host/cbit-store.js';
import { DEFAULT_PARAMS, migrateGuest } from '../../src/migration/run-migration.js';
import type { RoundProgress } from '../../src/migration/source.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { tempDir } from '../support/tmp.js';

function setup(opsPerTick: number) {
  const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, 1024);
  const guest = new ScriptedGuest(GuestMemory.create(1024), store, 1, 3, { opsPerTick, workingSet: 1024 });
  return { store, guest };
}

describe('convergence', () => {
  it('pauses as soon as the expected downtime fits --max-downtime', async () => {
    const { store, guest } = setup(0);
    const rounds: RoundProgress[] = [];
    const { summary } = await migrateGuest(
      { ...DEFAULT_PARAMS, onRound: (r) => rounds.push(r) },
      guest,
      store,
      1,
    );
    expect(summary.rounds).toBe(2); // round 0, then the paused round
    expect(rounds[0]).toMatchObject({ round: 0, dirtyLeft: 0, expectedDowntimeMs: 0 });
    store.close();
  });

  it('pauses after three rounds that do not shrink the dirty set, well before --max-rounds', async () => {
    // The guest dirties ~a third of its pages between every two reads of the log.
    const { store, guest } = setup(120);
    const rounds: RoundProgress[] = [];
    const { summary } = await migrateGuest(
      { ...DEFAULT_PARAMS, maxDowntimeMs: 1e-6, maxRounds: 30, onRound: (r) => rounds.push(r) },
      guest,
      store,
      1,
    );
    expect(summary.verified).toBe(true);
    expect(summary.rounds).toBeLessThan(10);
    expect(rounds.filter((r) => !r.paused).every((r) => r.dirtyLeft > 0)).toBe(true);
    store.close();
  });

  it('runs every round up to --max-rounds when --max-downtime is 0', async () => {
    const { store, guest } = setup(120);
    const { summary } = await migrateGuest(
      { ...DEFAULT_PARAMS, maxDowntimeMs: 0, maxRounds: 12 },
      guest,
      store,
      1,
    );
    expect(summary.rounds).toBe(13); // 12 live rounds and the paused one
    store.close();
  });
});
