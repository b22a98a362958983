/**
 * Every schedule of a small model, without running each one: the steps of a
 * model form a DAG (each step uses up guest budget, moves a conversion on, or
 * moves the migration thread on), and two runs in equal states (Model.key)
 * behave alike from there. So a depth-first search with one memo entry per
 * state counts the complete schedules, the corrupted ones among them, and the
 * length of the shortest corrupted one, each in time linear in the states and
 * steps between them; the shortest counterexample is read back from the memo.
 */
import { InvalidArgumentError } from '../common/errors.js';
import type { VerifyMode } from '../migration/stream.js';
import { Model, type ModelConfig, type Step } from './model.js';

interface Summary {
  /** Complete schedules from this state, and how many of them corrupt. */
  schedules: bigint;
  corrupted: bigint;
  /** Steps of the shortest corrupting continuation (Infinity: none), and its first step. */
  shortest: number;
  next: Step | null;
}

export interface ExhaustiveResult {
  schedules: bigint;
  corrupted: bigint;
  /** Distinct states visited. */
  states: number;
  /** The shortest corrupting schedule, or null when none corrupts. */
  counterexample: Step[] | null;
}

/** States the search may hold; past it the model is too large to search in full. */
export const MAX_STATES = 2_000_000;

/**
 * Pages the search takes for 1, 2, 3 and 4 vCPUs (index = vCPUs). Measured
 * at 2 operations per vCPU and 3 rounds: 2 vCPUs over 3 pages are ~0.3M
 * states (seconds), 3 vCPUs over 2 pages are past 2M on the broken contract.
 */
export const EXHAUSTIVE_MAX_PAGES = [0, 8, 3, 1, 1] as const;

/** Throws InvalidArgumentError, naming the flags, when `config` is beyond EXHAUSTIVE_MAX_PAGES. */
export function checkExhaustiveSize(config: ModelConfig): void {
  const max = EXHAUSTIVE_MAX_PAGES[config.vcpus] ?? 0;
  if (config.npages > max)
    throw new InvalidArgumentError(
      '--pages',
      `--exhaustive searches at most ${max} page${max === 1 ? '' : 's'} with ${config.vcpus} vCPUs (1 vCPU: 8, 2: 3, 3 or 4: 1); lower --pages or --vcpus, or use --schedules N`,
    );
}

/** Searches every schedule of `config`, judging each complete run under `mode`. */
export function exhaustive(config: ModelConfig, mode: VerifyMode, maxStates = MAX_STATES): ExhaustiveResult {
  const memo = new Map<string, Summary>();
  const scratch: Step[][] = [];

  const visit = (model: Model, depth: number): Summary => {
    const key = model.key();
    const known = memo.get(key);
    if (known) return known;
    let summary: Summary;
    if (model.done) {
      const bad = model.isCorrupted(mode);
      summary = { schedules: 1n, corrupted: bad ? 1n : 0n, shortest: bad ? 0 : Infinity, next: null };
    } else {
      summary = { schedules: 0n, corrupted: 0n, shortest: Infinity, next: null };
      scratch[depth] ??= [];
      const steps = [...model.enabled(scratch[depth])];
      for (const step of steps) {
        const child = model.clone();
        child.apply(step);
        const s = visit(child, depth + 1);
        summary.schedules += s.schedules;
        summary.corrupted += s.corrupted;
        if (s.shortest + 1 < summary.shortest) {
          summary.shortest = s.shortest + 1;
          summary.next = step;
        }
      }
    }
    if (memo.size >= maxStates)
      throw new InvalidArgumentError(
        'exhaustive',
        `the model of ${config.vcpus} vCPUs and ${config.npages} pages has more than ${maxStates} states; use fewer --vcpus or --pages, or --schedules N`,
      );
    memo.set(key, summary);
    return summary;
  };

  const root = new Model(config);
  const top = visit(root, 0);
  let counterexample: Step[] | null = null;
  if (top.shortest < Infinity) {
    counterexample = [];
    const m = new Model(config);
    for (let s = memo.get(m.key())!; s.next; s = memo.get(m.key())!) {
      counterexample.push(s.next);
      m.apply(s.next);
    }
  }
  return { schedules: top.schedules, corrupted: top.corrupted, states: memo.size, counterexample };
}
