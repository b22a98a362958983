/**
 * A two-sided migration over a real unix socket where each side keeps its own
 * log (as `--role source --log` and `--role destination --log` do): the
 * destination's log holds exactly the events docs/migration-log.md lists for
 * it, and what it received, page for page and perspective for perspective,
 * is what the source's log says it sent.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { connectChannel, listenChannel } from '../../src/migration/endpoints.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { runDestination } from '../../src/migration/run-destination.js';
import { DEFAULT_PARAMS, runSource } from '../../src/migration/run-migration.js';
import { tempDir } from '../support/tmp.js';

/** Every (round, gfn, perspective) of a log's sends or receives, expanded and sorted. */
function pages(r: MigrationLogReader, kind: 'send' | 'receive'): string[] {
  const out: string[] = [];
  for (const e of r.events)
    if (e.kind === kind)
      for (const run of e.runs)
        for (let g = run.gfn; g < run.gfn + run.npages; g++)
          out.push(`${e.round}:${g}:${run.encrypted ? 1 : 0}`);
  return out.sort();
}

describe('each side of a two-sided migration keeps its own log', () => {
  it('the destination logs what it received, and it matches what the source logged as sent', async () => {
    const dir = tempDir();
    const p = {
      ...DEFAULT_PARAMS,
      memoryBytes: 16 * 2 ** 20,
      workload: 'churn' as const,
      warmupMs: 50,
      maxDowntimeMs: 0,
      maxRounds: 3,
      onNoConvergence: 'pause' as const,
    };
    const listener = await listenChannel(
      { kind: 'unix', path: join(dir, 'm.sock') },
      { peerTimeoutMs: p.peerTimeoutMs, handshakeTimeoutMs: p.handshakeTimeoutMs },
    );
    const destLog = join(dir, 'dest.db');
    const srcLog = join(dir, 'src.db');
    const destination = listener.accept().then((ch) => runDestination({ ...p, log: destLog }, ch));
    // The source connects once its guest runs, as `migrate --role source` does.
    const summary = await runSource({ ...p, log: srcLog }, () =>
      connectChannel(listener.endpoint, p.peerTimeoutMs),
    );
    const verdict = await destination;
    listener.close();
    expect(summary.verified).toBe(true);
    expect(verdict.verified).toBe(true);

    const dst = MigrationLogReader.open(destLog);
    const src = MigrationLogReader.open(srcLog);
    expect(dst.meta).toMatchObject({ role: 'destination', npages: 4096, vcpus: 2, protocol: 'safe' });
    const kinds = new Set(dst.events.map((e) => e.kind));
    expect([...kinds].sort()).toEqual(
      ['start', 'receive', 'round-end', 'cbit-state', 'verification', 'resume', 'generation', 'end'].sort(),
    );
    expect(dst.events.filter((e) => e.kind === 'round-end').map((e) => e.round)).toEqual([0, 1, 2, 3]);
    expect(pages(dst, 'receive')).toEqual(pages(src, 'send'));
    expect(dst.state('final')!.bytes.equals(src.state('final')!.bytes)).toBe(true);
    const gen = dst.events.find((e) => e.kind === 'generation')!.detail;
    expect(gen).toEqual({ before: 0, after: 1 });
    dst.close();
    src.close();
  }, 60_000);
});
