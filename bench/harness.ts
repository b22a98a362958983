/**
 * The benchmark harness: every figure is printed with the LIMIT of the same
 * work measured in the same run (e.g. the same per-page ciphers, digests and
 * copies in a tight native loop on the same cores), so the ratio says how far
 * the figure is from what this machine can do, on a noisy machine too.
 * Groups register in main.ts; `npm run bench -- NAME` runs one group,
 * `--json` prints one JSON object per line ({ name, value, unit, limit,
 * limitName, ratio }).
 */
export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  /** The limit of the same work, in the same unit, measured in this run. */
  limit: number;
  /** What the limit is, for people reading the text output. */
  limitName: string;
  /**
   * value / limit: for rates (higher is better) the share of the limit
   * reached; for times and sizes (lower is better, said in the name) how many
   * times the limit it takes.
   */
  ratio: number;
}

/**
 * What a group reports: the limit as `limit`/`limitName`, or as
 * `baseline`/`baselineName` (groups whose reference is a comparison rather
 * than a limit; printed the same way).
 */
export type BenchReport = { name: string; value: number; unit: string } & (
  | { limit: number; limitName: string }
  | { baseline: number; baselineName: string }
);

export interface BenchGroup {
  name: string;
  description: string;
  run(report: (r: BenchReport) => void): Promise<void> | void;
}

function toResult(r: BenchReport): BenchResult {
  const limit = 'limit' in r ? r.limit : r.baseline;
  const limitName = 'limit' in r ? r.limitName : r.baselineName;
  return {
    name: r.name,
    value: r.value,
    unit: r.unit,
    limit,
    limitName,
    ratio: limit === 0 ? Number.POSITIVE_INFINITY : r.value / limit,
  };
}

/** Runs fn repeatedly for at least minMs (and at least once); returns calls per second. */
export function opsPerSecond(fn: () => void, minMs = 300): number {
  fn(); // warm-up
  let calls = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  do {
    fn();
    calls++;
    elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  } while (elapsed < minMs);
  return (calls * 1000) / elapsed;
}

/** Median wall time in milliseconds of `runs` calls of fn (after one warm-up). */
export function medianMs(fn: () => void, runs = 7): number {
  fn();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export { seededRandom } from '../src/common/rng.js';

function formatNumber(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (v >= 10) return v.toFixed(1);
  return v.toPrecision(3);
}

export async function runGroups(groups: BenchGroup[], selected: string[], json: boolean): Promise<number> {
  const unknown = selected.filter((s) => !groups.some((g) => g.name === s));
  if (unknown.length > 0) {
    process.stderr.write(
      `bench: unknown group ${unknown.join(', ')}; groups are: ${groups.map((g) => g.name).join(', ')}\n`,
    );
    return 2;
  }
  for (const group of groups) {
    if (selected.length > 0 && !selected.includes(group.name)) continue;
    if (!json) process.stdout.write(`\n== ${group.name}: ${group.description}\n`);
    await group.run((r) => {
      const result = toResult(r);
      if (json) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
      } else {
        process.stdout.write(
          `${r.name.padEnd(60)} ${formatNumber(r.value).padStart(9)} ${r.unit.padEnd(10)} ${'limit' in r ? 'limit' : 'vs'} ${formatNumber(result.limit)} (${result.limitName})  ratio ${result.ratio.toPrecision(3)}\n`,
        );
      }
    });
  }
  return 0;
}
