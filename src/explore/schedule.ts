/**
 * Schedules: the sequence of steps one run takes. A seeded random scheduler
 * picks them (randomSchedule), a recorded or edited list replays them
 * (replaySchedule), and shrink() cuts a corrupting schedule down to one
 * where every guest operation and every extra round is needed.
 */
import { InvariantError } from '../common/errors.js';
import { type Rng, randomInt } from '../common/rng.js';
import type { VerifyMode } from '../migration/stream.js';
import { isGuestStep, Model, type ModelConfig, type Step, StepTable } from './model.js';

/** Runs `model` to the end under `rng`, appending each step taken to `taken`. */
export function randomSchedule(model: Model, rng: Rng, taken: Step[], scratch: Step[] = []): void {
  const vcpus = model.config.vcpus;
  while (!model.done) {
    // Half the steps go to the host while both it and a vCPU can move, so a
    // round's reads and sends interleave with guest events at every point.
    const enabled = model.enabled(scratch);
    if (enabled.length === 0) throw new InvariantError('the model is stuck: no step is enabled');
    let hostCount = 0;
    while (hostCount < enabled.length && !isGuestStep(enabled[hostCount])) hostCount++;
    let step: Step;
    if (hostCount > 0 && (hostCount === enabled.length || rng() < 0.5)) {
      step = enabled[randomInt(rng, hostCount)];
    } else {
      // A vCPU with something to do, uniformly, then one of its steps.
      let v = randomInt(rng, vcpus);
      enabled.length = 0;
      for (let tries = 0; tries < vcpus && enabled.length === 0; tries++, v = (v + 1) % vcpus)
        model.vcpuSteps(v, enabled);
      step = enabled[randomInt(rng, enabled.length)];
    }
    model.apply(step);
    taken.push(step);
  }
}

/**
 * Replays `steps` on a fresh model of `config`, leniently, so that edited
 * schedules stay meaningful: a `host` step while the thread waits for its
 * decision is dropped; a `round` or `pause` first lets the thread finish
 * its round; at the end the thread runs on and pauses after its round.
 * Returns the model and the steps actually taken, or null when a guest step
 * or a decision is not enabled where it stands. `prepare` sees the fresh
 * model first (to listen to its events).
 */
export function replaySchedule(
  config: ModelConfig,
  steps: readonly Step[],
  table: StepTable = new StepTable(config.vcpus, config.npages),
  prepare?: (fresh: Model) => void,
): { model: Model; taken: Step[] } | null {
  const model = new Model(config, table);
  prepare?.(model);
  const taken: Step[] = [];
  const take = (step: Step) => {
    model.apply(step);
    taken.push(step);
  };
  const catchUp = () => {
    while (model.thread.phase !== 'decide' && !model.done) take(table.host);
  };
  for (const raw of steps) {
    const step = table.intern(raw);
    if (step.kind === 'host') {
      if (model.isEnabled(step)) take(step);
      continue;
    }
    if (step.kind === 'round' || step.kind === 'pause') catchUp();
    if (!model.isEnabled(step)) return null;
    take(step);
  }
  while (!model.done) {
    catchUp();
    if (model.done) break;
    if (!model.isEnabled(table.pause)) return null;
    take(table.pause);
  }
  return { model, taken };
}

/** The guest operations of a schedule: the indexes of a write, or of a conversion's three steps. */
function guestOperations(steps: readonly Step[]): number[][] {
  const ops: number[][] = [];
  const open = new Map<number, number[]>();
  steps.forEach((s, i) => {
    if (!isGuestStep(s)) return;
    if (s.kind === 'write') ops.push([i]);
    else if (s.kind === 'convert') {
      const op = [i];
      ops.push(op);
      open.set(s.vcpu, op);
    } else open.get(s.vcpu)?.push(i);
  });
  return ops;
}

/**
 * Greedily removes guest operations and extra live rounds from a schedule
 * that corrupts under `mode` while it still does. Every removal makes the
 * schedule strictly smaller, so this ends; the result is 1-minimal: removing
 * any one more operation or round makes it valid-and-clean or invalid.
 */
export function shrink(config: ModelConfig, steps: readonly Step[], mode: VerifyMode): Step[] {
  const table = new StepTable(config.vcpus, config.npages);
  let best = [...steps];
  for (;;) {
    const candidates: Step[][] = [];
    for (const op of guestOperations(best)) candidates.push(best.filter((_, i) => !op.includes(i)));
    best.forEach((s, i) => {
      if (s.kind === 'round') candidates.push(best.filter((_, j) => j !== i));
    });
    let improved = false;
    for (const c of candidates) {
      const r = replaySchedule(config, c, table);
      if (r?.model.isCorrupted(mode)) {
        best = r.taken;
        improved = true;
        break;
      }
    }
    if (!improved) return best;
  }
}
