import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/common/rng.js';
import { EXPECTED } from '../../src/explore/expected.js';
import { type ExploreOptions, explore } from '../../src/explore/explorer.js';
import { CONTRACTS, isGuestStep, Model, type ModelConfig, type Step } from '../../src/explore/model.js';
import { randomSchedule, replaySchedule } from '../../src/explore/schedule.js';
import { PROTOCOLS, VERIFY_MODES, type VerifyMode } from '../../src/migration/stream.js';

const base: ExploreOptions = {
  protocols: PROTOCOLS,
  schedules: 3000,
  exhaustive: false,
  vcpus: 2,
  pages: 2,
  seed: 7,
  contract: 'kept',
  verify: 'strict',
};

/** Every way to drop one guest operation (a write, or a conversion's three steps) from a schedule. */
function withoutOneOperation(steps: readonly Step[]): Step[][] {
  const out: Step[][] = [];
  steps.forEach((s, i) => {
    if (!isGuestStep(s) || s.kind === 'arrive' || s.kind === 'return') return;
    const drop = new Set([i]);
    if (s.kind === 'convert') {
      for (let j = i + 1; j < steps.length && drop.size < 3; j++) {
        const t = steps[j];
        if (isGuestStep(t) && t.vcpu === s.vcpu && (t.kind === 'arrive' || t.kind === 'return')) drop.add(j);
      }
    }
    out.push(steps.filter((_, j) => !drop.has(j)));
  });
  return out;
}

describe('explore: seeded random schedules reproduce the expected table', () => {
  for (const contract of CONTRACTS) {
    for (const verify of VERIFY_MODES) {
      it(`contract ${contract}, verify ${verify}`, () => {
        const r = explore({ ...base, contract, verify });
        expect(r.asExpected).toBe(true);
        for (const p of r.protocols) {
          expect(p.expected).toBe(EXPECTED[contract][p.protocol][verify]);
          expect(p.schedules).toBe(3000);
          if (p.expected === 'never') {
            expect(p.corrupted).toBe(0);
            expect(p.counterexample).toBeNull();
          } else {
            expect(p.corrupted).toBeGreaterThan(0);
            expect(p.counterexample!.corruptedGfns.length).toBeGreaterThan(0);
          }
        }
      });
    }
  }

  it('is deterministic for a seed, and the seed matters', () => {
    const strip = (r: ReturnType<typeof explore>) => ({ ...r, elapsedMs: 0 });
    const a = explore({ ...base, schedules: 1000 });
    const b = explore({ ...base, schedules: 1000 });
    expect(strip(a)).toEqual(strip(b));
    const c = explore({ ...base, schedules: 1000, seed: 8 });
    expect(c.protocols.map((p) => p.corrupted)).not.toEqual(a.protocols.map((p) => p.corrupted));
  });

  it('finds the broken-contract counterexample for safe: a write under the new c-bit while another vCPU notifies', () => {
    const r = explore({ ...base, protocols: ['safe'], contract: 'broken', verify: 'defined' });
    const ce = r.protocols[0].counterexample!;
    const text = ce.timeline.join('\n');
    const converts = /vCPU(\d) converts gfn (\d) to (\w+) \(its c-bit table\); notification in flight/.exec(
      text,
    )!;
    const [, v, gfn, cbit] = converts;
    const other = Number(v) === 0 ? 1 : 0;
    expect(text).toContain(`vCPU${other} writes d`);
    expect(text).toMatch(new RegExp(`vCPU${other} writes d\\d+ to gfn ${gfn} as ${cbit}`));
    expect(text).toContain(`vCPU${v}'s notification for gfn ${gfn} is still in flight`);
    expect(text).not.toContain(`vCPU${v}'s notification for gfn ${gfn} reaches`);
    expect(ce.corruptedGfns).toEqual([Number(gfn)]);
  });

  it('reports minimal counterexamples: dropping any one guest operation makes the schedule clean or impossible', () => {
    for (const contract of CONTRACTS) {
      for (const verify of VERIFY_MODES) {
        const r = explore({ ...base, contract, verify, schedules: 1500 });
        for (const p of r.protocols) {
          if (!p.counterexample) continue;
          const config: ModelConfig = {
            protocol: p.protocol,
            contract,
            vcpus: 2,
            npages: 2,
            opsPerVcpu: r.opsPerVcpu,
            maxRounds: r.maxRounds,
          };
          const steps = p.counterexample.schedule;
          const full = replaySchedule(config, steps);
          expect(full?.model.isCorrupted(verify)).toBe(true);
          for (const smaller of withoutOneOperation(steps)) {
            const again = replaySchedule(config, smaller);
            expect(again === null || !again.model.isCorrupted(verify)).toBe(true);
          }
        }
      }
    }
  });

  it('property: under safe with the contract kept, every schedule verifies in both modes', () => {
    fc.assert(
      fc.property(
        fc.record({
          vcpus: fc.integer({ min: 1, max: 3 }),
          npages: fc.integer({ min: 1, max: 4 }),
          opsPerVcpu: fc.integer({ min: 0, max: 4 }),
          maxRounds: fc.integer({ min: 1, max: 4 }),
          seed: fc.nat(),
        }),
        ({ seed, ...size }) => {
          const model = new Model({ protocol: 'safe', contract: 'kept', ...size });
          randomSchedule(model, seededRandom(seed), []);
          expect(model.done).toBe(true);
          for (const mode of VERIFY_MODES) expect(model.corrupted(mode as VerifyMode)).toEqual([]);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('property: a defined corruption is also a strict one (defined compares a subset)', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...PROTOCOLS),
        fc.constantFrom(...CONTRACTS),
        fc.nat(),
        (protocol, contract, seed) => {
          const model = new Model({ protocol, contract, vcpus: 2, npages: 3, opsPerVcpu: 3, maxRounds: 3 });
          randomSchedule(model, seededRandom(seed), []);
          const strict = model.corrupted('strict').map((v) => v.gfn);
          for (const v of model.corrupted('defined')) expect(strict).toContain(v.gfn);
        },
      ),
      { numRuns: 500 },
    );
  });
});
