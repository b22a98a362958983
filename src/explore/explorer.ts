/**
 * `sevtrack explore` as a call: for each protocol variant, run N seeded
 * random schedules (or every schedule of the model), count the corrupted
 * outcomes, keep the shortest counterexample as a timeline, and compare with
 * the table of expected outcomes (expected.ts).
 */
import { InvalidArgumentError } from '../common/errors.js';
import { seededRandom } from '../common/rng.js';
import type { Protocol, VerifyMode } from '../migration/stream.js';
import { checkExhaustiveSize, exhaustive } from './exhaustive.js';
import { type Expectation, expectedOutcome, meetsExpectation } from './expected.js';
import { type Contract, checkConfig, Model, type ModelConfig, type Step, StepTable } from './model.js';
import { randomSchedule, shrink } from './schedule.js';
import { renderTimeline } from './timeline.js';

export interface ExploreOptions {
  protocols: readonly Protocol[];
  /** Random schedules per protocol; ignored with `exhaustive`. */
  schedules: number;
  exhaustive: boolean;
  vcpus: number;
  pages: number;
  seed: number;
  contract: Contract;
  verify: VerifyMode;
  /** Guest operations per vCPU (default DEFAULT_OPS_PER_VCPU). */
  opsPerVcpu?: number;
  /** Live rounds before the pause is forced (default DEFAULT_MAX_ROUNDS). */
  maxRounds?: number;
  /** Called now and then with the protocol and the schedules run so far (random mode). */
  onProgress?: (protocol: Protocol, done: number, total: number) => void;
}

/**
 * Model bounds: 2 operations per vCPU and 3 live rounds are the least that
 * let every race of docs/design.md §3 happen (cbit-first needs its race in a
 * round that is neither the first nor the last live one) while the
 * exhaustive search of 2 vCPUs over 2 pages stays in the seconds.
 */
export const DEFAULT_OPS_PER_VCPU = 2;
export const DEFAULT_MAX_ROUNDS = 3;

export interface Counterexample {
  /** Steps of the schedule: scheduling choices (a guest event, a host event, the pause; the paused round is one). */
  steps: number;
  /** Events in the timeline (the paused round's reads and sends each count). */
  events: number;
  /** The schedule itself: replaySchedule() on the same model reproduces it. */
  schedule: Step[];
  /** Pages that arrived wrong. */
  corruptedGfns: number[];
  timeline: string[];
}

export interface ProtocolReport {
  protocol: Protocol;
  expected: Expectation;
  schedules: number;
  corrupted: number;
  /** Distinct model states visited (exhaustive only). */
  states?: number;
  asExpected: boolean;
  /** The shortest corrupting schedule found (minimal in exhaustive mode, shrunk otherwise), or null. */
  counterexample: Counterexample | null;
}

export interface ExploreReport {
  mode: 'random' | 'exhaustive';
  contract: Contract;
  verify: VerifyMode;
  vcpus: number;
  pages: number;
  seed: number;
  opsPerVcpu: number;
  maxRounds: number;
  protocols: ProtocolReport[];
  /** Every protocol behaved as expected.ts says. */
  asExpected: boolean;
  elapsedMs: number;
}

/** The random generator of schedule `index` of a run seeded with `seed`. */
function scheduleRng(seed: number, index: number) {
  return seededRandom((Math.imul(seed, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
}

/** Counts from a BigInt, refusing what a JSON number cannot hold exactly. */
function exactNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new InvalidArgumentError('exhaustive', `${what} (${v}) exceed 2^53; use a smaller model`);
  return Number(v);
}

function runRandom(config: ModelConfig, o: ExploreOptions) {
  const table = new StepTable(config.vcpus, config.npages);
  const taken: Step[] = [];
  const scratch: Step[] = [];
  let corrupted = 0;
  let shortest: Step[] | null = null;
  for (let i = 0; i < o.schedules; i++) {
    const model = new Model(config, table);
    taken.length = 0;
    randomSchedule(model, scheduleRng(o.seed, i), taken, scratch);
    if (model.isCorrupted(o.verify)) {
      corrupted++;
      if (!shortest || taken.length < shortest.length) shortest = [...taken];
    }
    if (o.onProgress && (i + 1) % 5000 === 0) o.onProgress(config.protocol, i + 1, o.schedules);
  }
  return {
    schedules: o.schedules,
    corrupted,
    counterexample: shortest ? shrink(config, shortest, o.verify) : null,
  };
}

/** Runs the exploration; throws InvalidArgumentError for a bad option or a model too large to search. */
export function explore(o: ExploreOptions): ExploreReport {
  const t0 = performance.now();
  const opsPerVcpu = o.opsPerVcpu ?? DEFAULT_OPS_PER_VCPU;
  const maxRounds = o.maxRounds ?? DEFAULT_MAX_ROUNDS;
  if (o.protocols.length === 0) throw new InvalidArgumentError('protocols', 'name at least one protocol');
  if (!o.exhaustive && (!Number.isSafeInteger(o.schedules) || o.schedules < 1))
    throw new InvalidArgumentError('schedules', `schedules ${o.schedules} must be a positive integer`);
  const reports: ProtocolReport[] = [];
  for (const protocol of o.protocols) {
    const config: ModelConfig = {
      protocol,
      contract: o.contract,
      vcpus: o.vcpus,
      npages: o.pages,
      opsPerVcpu,
      maxRounds,
    };
    checkConfig(config);
    if (o.exhaustive) checkExhaustiveSize(config);
    let schedules: number;
    let corrupted: number;
    let states: number | undefined;
    let steps: Step[] | null;
    if (o.exhaustive) {
      const r = exhaustive(config, o.verify);
      schedules = exactNumber(r.schedules, 'the schedules');
      corrupted = exactNumber(r.corrupted, 'the corrupted schedules');
      states = r.states;
      steps = r.counterexample;
    } else {
      const r = runRandom(config, o);
      ({ schedules, corrupted } = r);
      steps = r.counterexample;
    }
    let counterexample: Counterexample | null = null;
    if (steps) {
      const t = renderTimeline(config, steps, o.verify);
      counterexample = {
        steps: steps.length,
        events: t.events,
        schedule: steps,
        corruptedGfns: t.corrupted.map((v) => v.gfn),
        timeline: t.lines,
      };
    }
    const expected = expectedOutcome(protocol, o.contract, o.verify);
    reports.push({
      protocol,
      expected,
      schedules,
      corrupted,
      ...(states === undefined ? {} : { states }),
      asExpected: meetsExpectation(expected, corrupted),
      counterexample,
    });
  }
  return {
    mode: o.exhaustive ? 'exhaustive' : 'random',
    contract: o.contract,
    verify: o.verify,
    vcpus: o.vcpus,
    pages: o.pages,
    seed: o.seed,
    opsPerVcpu,
    maxRounds,
    protocols: reports,
    asExpected: reports.every((r) => r.asExpected),
    elapsedMs: performance.now() - t0,
  };
}
