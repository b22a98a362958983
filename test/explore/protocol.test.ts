import { describe, expect, it } from 'vitest';
import type { Contract, ModelConfig, Step } from '../../src/explore/model.js';
import { PLANS } from '../../src/explore/protocol.js';
import { replaySchedule } from '../../src/explore/schedule.js';
import { renderTimeline } from '../../src/explore/timeline.js';
import type { ModelEvent } from '../../src/explore/world.js';
import { PROTOCOLS, type Protocol, type VerifyMode } from '../../src/migration/stream.js';

const host: Step = { kind: 'host' };
const round: Step = { kind: 'round' };
const pause: Step = { kind: 'pause' };
const convert = (vcpu: number, gfn: number): Step => ({ kind: 'convert', vcpu, gfn });
const arrive = (vcpu: number): Step => ({ kind: 'arrive', vcpu });
const ret = (vcpu: number): Step => ({ kind: 'return', vcpu });
const write = (vcpu: number, gfn: number): Step => ({ kind: 'write', vcpu, gfn });
/** A whole conversion, rule 5's three steps back to back. */
const conversion = (vcpu: number, gfn: number) => [convert(vcpu, gfn), arrive(vcpu), ret(vcpu)];

function config(protocol: Protocol, contract: Contract = 'kept', vcpus = 2): ModelConfig {
  return { protocol, contract, vcpus, npages: 2, opsPerVcpu: 4, maxRounds: 4 };
}

function corrupted(protocol: Protocol, steps: Step[], mode: VerifyMode, contract: Contract = 'kept') {
  const r = replaySchedule(config(protocol, contract), steps);
  if (!r) throw new Error('schedule does not replay');
  return r.model.corrupted(mode).map((v) => v.gfn);
}

// Round 0 over two pages: harvest, sync, send gfn 0, send gfn 1.
const round0 = [host, host, host, host];

/**
 * Steve Rutherford's race (docs/design.md §3): in round 1 the c-bit state is
 * read, then gfn 0 is converted and written, then the dirty log is read, and
 * round 2 consumes the change before the pause.
 */
const rutherford = [
  ...round0,
  round,
  host, // cbit-first reads the c-bit state here; every other variant harvests
  ...conversion(0, 0),
  write(0, 0),
  host, // the other read
  round,
  pause,
];

describe('the protocol variants as step machines', () => {
  it('every variant has a plan, and the plans say what docs/design.md §3 says', () => {
    expect(Object.keys(PLANS).sort()).toEqual([...PROTOCOLS].sort());
    expect(PLANS.safe.live.reads).toEqual(['harvest', 'sync']);
    expect(PLANS.safe.live.resendChanged && PLANS.safe.final.resendChanged).toBe(true);
    expect(PLANS['cbit-first'].live.reads).toEqual(['sync', 'harvest']);
    expect(PLANS['cbit-first'].live.resendChanged).toBe(false);
    expect(PLANS['cbit-first'].final.resendChanged).toBe(true);
    expect(PLANS['no-cbit-dirty'].final.resendChanged).toBe(false);
    expect(PLANS['no-final-diff'].final).toMatchObject({ reads: ['harvest'], perspective: 'last-live-sync' });
    expect(PLANS.naive.live.perspective).toBe('initial');
  });

  it("Rutherford's race corrupts cbit-first in both modes and nothing else", () => {
    expect(corrupted('cbit-first', rutherford, 'defined')).toEqual([0]);
    expect(corrupted('cbit-first', rutherford, 'strict')).toEqual([0]);
    for (const p of ['safe', 'no-cbit-dirty', 'no-final-diff'] as const)
      expect(corrupted(p, rutherford, 'strict')).toEqual([]);
  });

  it('the race in the last live round is caught by the pause-time diff (rule 4)', () => {
    const lastRound = rutherford.slice(0, rutherford.indexOf(round, 5)).concat(pause);
    expect(corrupted('cbit-first', lastRound, 'defined')).toEqual([]);
  });

  it('a conversion that is never rewritten: only rule 3 and rule 4 resend it', () => {
    const steps = [...round0, ...conversion(1, 1), pause];
    expect(corrupted('safe', steps, 'strict')).toEqual([]);
    expect(corrupted('cbit-first', steps, 'strict')).toEqual([]);
    expect(corrupted('no-cbit-dirty', steps, 'strict')).toEqual([1]);
    expect(corrupted('no-cbit-dirty', steps, 'defined')).toEqual([]);
    expect(corrupted('no-final-diff', steps, 'strict')).toEqual([1]);
    expect(corrupted('naive', steps, 'strict')).toEqual([1]);
  });

  it('a converted and rewritten page after the last live sync: no-final-diff and naive send it with the old state', () => {
    const steps = [...round0, ...conversion(1, 1), write(1, 1), pause];
    expect(corrupted('no-final-diff', steps, 'defined')).toEqual([1]);
    expect(corrupted('naive', steps, 'defined')).toEqual([1]);
    expect(corrupted('safe', steps, 'defined')).toEqual([]);
    expect(corrupted('no-cbit-dirty', steps, 'defined')).toEqual([]);
  });

  it('the broken contract: vCPU1 writes under the new c-bit while vCPU0 notifies, the pause lands between — safe corrupts', () => {
    const steps = [...round0, convert(0, 1), write(1, 1), pause];
    expect(corrupted('safe', steps, 'defined', 'broken')).toEqual([1]);
    // Let the notification arrive before the pause and rule 3/4 resend the page.
    const arrived = [...round0, convert(0, 1), write(1, 1), arrive(0), pause];
    expect(corrupted('safe', arrived, 'defined', 'broken')).toEqual([]);
    // With the contract kept, that write cannot happen.
    expect(replaySchedule(config('safe'), steps)).toBeNull();
    // Nor can the pause land mid-conversion.
    expect(replaySchedule(config('safe'), [...round0, convert(0, 1), pause])).toBeNull();
  });

  it('events follow the plan: harvest before sync in safe, sync before harvest in cbit-first', () => {
    for (const [p, first] of [
      ['safe', 'harvest'],
      ['cbit-first', 'sync'],
    ] as const) {
      const events: ModelEvent[] = [];
      replaySchedule(config(p), [...round0, round, host], undefined, (m) => {
        m.world.onEvent = (e) => events.push(e);
      });
      const round1 = events.filter((e) => 'round' in e && e.round === 1);
      expect(round1[0].kind).toBe(first);
    }
  });

  it('the timeline names each event and the corrupted page', () => {
    const t = renderTimeline(
      config('safe', 'broken'),
      [...round0, convert(0, 1), write(1, 1), pause],
      'defined',
    );
    const text = t.lines.join('\n');
    expect(text).toMatch(/vCPU0 converts gfn 1 to encrypted \(its c-bit table\); notification in flight/);
    expect(text).toMatch(/vCPU1 writes d2 to gfn 1 as encrypted/);
    expect(text).toMatch(
      /host pauses the guest after round 0; vCPU0's notification for gfn 1 is still in flight/,
    );
    expect(text).toMatch(/host round 1 \(paused\): sends gfn 1 \(d2\) as shared \(dirty\)/);
    expect(text).toMatch(
      /gfn 1 CORRUPTED: at pause the guest \(c-bit encrypted\) read d2, the destination guest reads XTS⁻¹\[dst\]\(XTS\[src\]\(d2\)\); last sent in round 1 holding d2 as shared/,
    );
    expect(t.corrupted.map((v) => v.gfn)).toEqual([1]);
  });
});
