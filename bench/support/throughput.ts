import { describeDowntimePhases, type MigrationSummary } from '../../src/migration/source.js';

/** A migration's pages per second over its own time (handshake to verdict). */
export const pagesPerSecond = (s: MigrationSummary): number => s.pagesSent / (s.totalMs / 1000);

/**
 * Writes where a migration's downtime went to stderr (the JSON figures stay
 * on stdout): a downtime far from the run's others says which paused step
 * took it (e.g. a tracker's commit on a disk busy writing back).
 */
export function noteDowntimePhases(what: string, s: MigrationSummary): void {
  process.stderr.write(
    `${what}: downtime ${s.downtimeMs.toFixed(1)} ms: ${describeDowntimePhases(s.downtimePhases)}\n`,
  );
}
