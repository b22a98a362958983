/**
 * The event rules a migration log must keep (src/migration/log-events.ts,
 * docs/migration-log.md), each broken through the writer itself so the
 * digest chain stays valid: the reader still refuses the log, naming the
 * event and the rule (MigrationLogError 'invalid-event').
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { MigrationLogError } from '../../src/migration/log-schema.js';
import { MigrationLog } from '../../src/migration/migration-log.js';
import { tempDir } from '../support/tmp.js';

/** Writes a log with `events`, closes it, and returns the reader's refusal. */
function refusalOf(events: (log: MigrationLog) => void): MigrationLogError {
  const path = join(tempDir(), 'm.db');
  const log = MigrationLog.create(path, {
    role: 'source',
    npages: 32,
    vcpus: 1,
    protocol: 'safe',
    verify: 'strict',
    params: {},
  });
  events(log);
  log.close({});
  try {
    MigrationLogReader.open(path).close();
  } catch (err) {
    expect(err).toBeInstanceOf(MigrationLogError);
    expect((err as MigrationLogError).problem).toBe('invalid-event');
    return err as MigrationLogError;
  }
  throw new Error('the log was accepted');
}

const start = (log: MigrationLog) => log.start({ generation: 0, migrationControl: 1 });

describe('a log whose events break the format rules is refused, naming the event', () => {
  it('an event before start', () => {
    const e = refusalOf((log) => log.harvest(0, [{ gfn: 0, npages: 2 }]));
    expect(e.eventId).toBe(1);
    expect(e.message).toMatch(
      /: event #1 \(harvest\): the first event must be start \(or abort, for a migration that never started\)$/,
    );
  });

  it('a round that goes back', () => {
    const e = refusalOf((log) => {
      start(log);
      log.roundEnd(2, { pagesSent: 0 });
      log.harvest(1, [{ gfn: 0, npages: 1 }]);
    });
    expect(e.eventId).toBe(3);
    expect(e.message).toMatch(/: event #3 \(harvest\): round 1 goes back \(after round 2\)$/);
  });

  it('a sync whose sequence range runs backwards, or does not start at the last sync', () => {
    const backwards = refusalOf((log) => {
      start(log);
      log.sync(0, { seq: 3, previousSeq: 5, delta: [] });
    });
    expect(backwards.message).toMatch(/: event #2 \(sync\): sequence range \(5, 3\] is not a range$/);
    const gap = refusalOf((log) => {
      start(log);
      log.sync(0, { seq: 5, previousSeq: 0, delta: [] });
      log.sync(1, { seq: 9, previousSeq: 7, delta: [] });
    });
    expect(gap.eventId).toBe(3);
    expect(gap.message).toMatch(/: event #3 \(sync\): previousSeq 7 is not the last sync's seq 5$/);
  });

  it('a second pause', () => {
    const e = refusalOf((log) => {
      start(log);
      log.pause(1, { converged: true });
      log.pause(1, { converged: true });
    });
    expect(e.message).toMatch(/: event #3 \(pause\): a second pause$/);
  });
});
