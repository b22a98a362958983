import type { MigrationSummary } from '../../src/migration/source.js';

/** A migration's pages per second over its own time (handshake to verdict). */
export const pagesPerSecond = (s: MigrationSummary): number => s.pagesSent / (s.totalMs / 1000);
