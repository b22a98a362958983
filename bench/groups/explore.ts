/**
 * Schedules explored per second. Random search against replaying the same
 * schedules step by step (the model's own cost, with no choosing); the
 * exhaustive search against enumerating the same schedules one by one.
 */
import { exhaustive } from '../../src/explore/exhaustive.js';
import { Model, type ModelConfig, type Step, StepTable } from '../../src/explore/model.js';
import { randomSchedule } from '../../src/explore/schedule.js';
import { PROTOCOLS } from '../../src/migration/stream.js';
import { type BenchGroup, medianMs, seededRandom } from '../harness.js';

/** Units of `work()` per second, from the median time of 5 runs after a warm-up (the machine is shared). */
function perSecond(work: () => number): number {
  let n = 0;
  const ms = medianMs(() => {
    n = work();
  }, 5);
  return n / (ms / 1000);
}

/** Every complete schedule of `config`, one by one; returns how many. */
function enumerate(m: Model): number {
  if (m.done) {
    m.isCorrupted('strict');
    return 1;
  }
  let n = 0;
  for (const s of [...m.enabled([])]) {
    const child = m.clone();
    child.apply(s);
    n += enumerate(child);
  }
  return n;
}

export const exploreGroup: BenchGroup = {
  name: 'explore',
  description: 'sevtrack explore: schedules per second, random and exhaustive (2 vCPUs)',
  run(report) {
    const perProtocol = 4000;
    const configs: ModelConfig[] = PROTOCOLS.map((protocol) => ({
      protocol,
      contract: 'kept',
      vcpus: 2,
      npages: 2,
      opsPerVcpu: 2,
      maxRounds: 3,
    }));
    const recorded: Step[][][] = configs.map(() => []);
    const random = perSecond(() => {
      configs.forEach((config, c) => {
        const table = new StepTable(config.vcpus, config.npages);
        const scratch: Step[] = [];
        recorded[c] = [];
        for (let i = 0; i < perProtocol; i++) {
          const m = new Model(config, table);
          const taken: Step[] = [];
          randomSchedule(m, seededRandom(i + 1), taken, scratch);
          m.isCorrupted('strict');
          recorded[c].push(taken);
        }
      });
      return perProtocol * configs.length;
    });
    const replay = perSecond(() => {
      configs.forEach((config, c) => {
        const table = new StepTable(config.vcpus, config.npages);
        for (const steps of recorded[c]) {
          const m = new Model(config, table);
          for (const s of steps) m.apply(s);
          m.isCorrupted('strict');
        }
      });
      return perProtocol * configs.length;
    });
    report({
      name: 'random schedules, 2 vCPUs x 2 pages, 5 variants',
      value: random,
      unit: 'sched/s',
      baseline: replay,
      baselineName: 'replaying the same schedules',
    });

    const small: ModelConfig = { ...configs[0], contract: 'broken', npages: 1, opsPerVcpu: 1, maxRounds: 2 };
    const searched = perSecond(() => Number(exhaustive(small, 'strict').schedules));
    const listed = perSecond(() => enumerate(new Model(small)));
    report({
      name: 'exhaustive, 2 vCPUs x 1 page, broken contract',
      value: searched,
      unit: 'sched/s',
      baseline: listed,
      baselineName: 'enumerating them one by one',
    });

    let states = 0;
    const statesPerSecond = perSecond(() => {
      states = exhaustive({ ...configs[0], contract: 'broken' }, 'strict').states;
      return states;
    });
    const replayStates = perSecond(() => {
      // The same number of model steps as states, taken by replaying recorded schedules.
      let n = 0;
      const table = new StepTable(2, 2);
      for (const steps of recorded[0]) {
        const m = new Model(configs[0], table);
        for (const s of steps) {
          m.apply(s);
          if (++n === states) return n;
        }
      }
      return n;
    });
    report({
      name: `exhaustive, 2 vCPUs x 2 pages: ${states} states`,
      value: statesPerSecond,
      unit: 'states/s',
      baseline: replayStates,
      baselineName: 'model steps replayed',
    });
  },
};
