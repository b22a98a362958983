import { describe, expect, it } from 'vitest';
import { exhaustive } from '../../src/explore/exhaustive.js';
import { EXPECTED } from '../../src/explore/expected.js';
import { explore } from '../../src/explore/explorer.js';
import { Model, type ModelConfig, type Step } from '../../src/explore/model.js';
import { replaySchedule } from '../../src/explore/schedule.js';
import { PROTOCOLS, VERIFY_MODES, type VerifyMode } from '../../src/migration/stream.js';

/** Every schedule, one by one, no memo: the reference the memoized search must agree with. */
function bruteForce(config: ModelConfig) {
  const per = (mode: VerifyMode) => ({ mode, corrupted: 0, shortest: Infinity });
  const modes = VERIFY_MODES.map(per);
  let schedules = 0;
  const walk = (m: Model, depth: number) => {
    if (m.done) {
      schedules++;
      for (const r of modes) {
        if (!m.isCorrupted(r.mode)) continue;
        r.corrupted++;
        r.shortest = Math.min(r.shortest, depth);
      }
      return;
    }
    for (const s of [...m.enabled([])]) {
      const child = m.clone();
      child.apply(s);
      walk(child, depth + 1);
    }
  };
  walk(new Model(config), 0);
  return { schedules, modes };
}

describe('explore --exhaustive', () => {
  it('with no guest operations there are exactly the pause choices: after round 0, 1 or 2', () => {
    for (const protocol of PROTOCOLS) {
      const r = exhaustive(
        { protocol, contract: 'kept', vcpus: 1, npages: 1, opsPerVcpu: 0, maxRounds: 3 },
        'strict',
      );
      expect(r.schedules).toBe(3n);
      expect(r.corrupted).toBe(0n);
      expect(r.counterexample).toBeNull();
    }
  });

  it('the deduplicated search counts what enumerating every schedule counts', () => {
    for (const protocol of PROTOCOLS) {
      const config: ModelConfig = {
        protocol,
        contract: 'broken',
        vcpus: 2,
        npages: 1,
        opsPerVcpu: 1,
        maxRounds: 2,
      };
      const ref = bruteForce(config);
      for (const { mode, corrupted, shortest } of ref.modes) {
        const r = exhaustive(config, mode);
        expect(r.schedules).toBe(BigInt(ref.schedules));
        expect(r.corrupted).toBe(BigInt(corrupted));
        expect(r.counterexample?.length ?? Infinity).toBe(shortest);
        expect(r.states).toBeLessThan(ref.schedules);
      }
    }
  });

  it('every schedule of 1 vCPU over 2 pages reproduces the kept-contract table', () => {
    for (const verify of VERIFY_MODES) {
      const r = explore({
        protocols: PROTOCOLS,
        schedules: 1,
        exhaustive: true,
        vcpus: 1,
        pages: 2,
        seed: 0,
        contract: 'kept',
        verify,
      });
      expect(r.mode).toBe('exhaustive');
      expect(r.asExpected).toBe(true);
      for (const p of r.protocols) {
        expect(p.expected).toBe(EXPECTED.kept[p.protocol][verify]);
        expect(p.states).toBeGreaterThan(0);
        expect(p.schedules).toBeGreaterThan(p.states!);
      }
    }
  });

  it('every schedule of 2 vCPUs over 2 pages: safe corrupts on the broken contract, with the shortest counterexample', () => {
    const r = explore({
      protocols: ['safe'],
      schedules: 1,
      exhaustive: true,
      vcpus: 2,
      pages: 2,
      seed: 0,
      contract: 'broken',
      verify: 'defined',
    });
    const p = r.protocols[0];
    expect(p.asExpected).toBe(true);
    expect(p.corrupted).toBeGreaterThan(0);
    const ce = p.counterexample!;
    // Round 0 (harvest, sync, two sends), the table step, the other vCPU's write, the pause, the paused round.
    expect(ce.steps).toBe(8);
    const kinds = ce.schedule.map((s: Step) => s.kind);
    expect(kinds.filter((k) => k === 'convert')).toHaveLength(1);
    expect(kinds.filter((k) => k === 'write')).toHaveLength(1);
    expect(kinds).not.toContain('arrive');
    const replayed = replaySchedule(
      { protocol: 'safe', contract: 'broken', vcpus: 2, npages: 2, opsPerVcpu: 2, maxRounds: 3 },
      ce.schedule,
    );
    expect(replayed?.model.corrupted('defined').map((v) => v.gfn)).toEqual(ce.corruptedGfns);
  });

  it('refuses a model too large to search, naming the flags to change', () => {
    expect(() =>
      exhaustive(
        { protocol: 'safe', contract: 'kept', vcpus: 2, npages: 2, opsPerVcpu: 2, maxRounds: 3 },
        'strict',
        100,
      ),
    ).toThrow(/more than 100 states; use fewer --vcpus or --pages, or --schedules N/);
  });
});
