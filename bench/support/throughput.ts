import type { MigrationSummary } from '../../src/migration/source.js';

/** A migration's pages per second over its own time (handshake to verdict). */
export const pagesPerSecond = (s: MigrationSummary): number => s.pagesSent / (s.totalMs / 1000);

/**
 * Writes where a migration's downtime went to stderr (the JSON figures stay
 * on stdout): a downtime far from the run's others says which paused step
 * took it (e.g. a tracker's commit on a disk busy writing back).
 */
export function noteDowntimePhases(what: string, s: MigrationSummary): void {
  const d = s.downtimePhases;
  const ms = (v: number) => v.toFixed(1);
  process.stderr.write(
    `${what}: downtime ${ms(s.downtimeMs)} ms = final reads ${ms(d.readsMs)} + final pages ${ms(d.pagesMs)} + state ${ms(d.stateMs)} + destination ${ms(d.destinationMs)}\n`,
  );
}
