/**
 * The benchmark harness: every figure is printed with a baseline measured in
 * the same run, so ratios stay meaningful on a noisy machine. Groups register
 * here; `npm run bench -- NAME` runs one group, `--json` prints one JSON
 * object per line ({ name, value, unit, baseline, ratio }).
 */
export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  /** The same measure for the baseline, in the same unit. */
  baseline: number;
  /** What the baseline is, for people reading the text output. */
  baselineName: string;
  /** value / baseline (for "lower is better" units the group states it in the name). */
  ratio: number;
}

export interface BenchGroup {
  name: string;
  description: string;
  run(report: (r: Omit<BenchResult, 'ratio'>) => void): Promise<void> | void;
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
      const result: BenchResult = {
        ...r,
        ratio: r.baseline === 0 ? Number.POSITIVE_INFINITY : r.value / r.baseline,
      };
      if (json) {
        const { baselineName: _omit, ...line } = result;
        process.stdout.write(`${JSON.stringify({ ...line, baselineName: r.baselineName })}\n`);
      } else {
        process.stdout.write(
          `${r.name.padEnd(52)} ${formatNumber(r.value).padStart(9)} ${r.unit.padEnd(10)} baseline (${r.baselineName}) ${formatNumber(r.baseline)}  ratio ${result.ratio.toPrecision(3)}x\n`,
        );
      }
    });
  }
  return 0;
}
