/**
 * GenerationRegistry against a naive model: a seeded random sequence of
 * opens, closes, tracking changes, reads, acks and bumps, after each of which
 * the outdated count, every watcher's state and every pending read and wait
 * must match what the rules of docs/sysgenid.md say.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { errnoOf } from '../../src/sysgenid/errors.js';
import { GenerationRegistry, type Watcher } from '../../src/sysgenid/registry.js';

function le(v: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}

describe('GenerationRegistry', () => {
  it('bumps to max(min, current + 1) and publishes before waking readers', () => {
    const published: number[] = [];
    const r = new GenerationRegistry(5, (g) => published.push(g));
    const w = r.open(1, 0);
    const seen: Array<[number | undefined, number[]]> = [];
    r.read(w, false, (_e, g) => seen.push([g, [...published]]));
    expect(r.bump(3).generation).toBe(6);
    expect(seen).toEqual([[6, [6]]]);
    expect(r.bump(100).generation).toBe(100);
    expect(r.bump(100).generation).toBe(101);
  });

  it('refuses to wrap the u32 (EOVERFLOW) and changes nothing', () => {
    const r = new GenerationRegistry(0xffffffff, () => {});
    expect(() => r.bump(0)).toThrow(expect.objectContaining({ errno: 'EOVERFLOW' }));
    expect(r.generation).toBe(0xffffffff);
  });

  it('matches a naive model over seeded random operation sequences', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 7 }), fc.nat(7), fc.nat(20)), { maxLength: 80 }),
        (ops) => {
          const r = new GenerationRegistry(0, () => {});
          const live: Watcher[] = [];
          const model = new Map<Watcher, { gen: number; tracked: boolean; reads: number; waits: number }>();
          let gen = 0;
          let readsAnswered = 0;
          let waitsOk = 0;
          let waitsIntr = 0;
          let expectReads = 0;
          let expectOk = 0;
          let expectIntr = 0;
          const outdatedModel = () => [...model.values()].filter((m) => m.tracked && m.gen !== gen).length;
          for (const [op, pick, arg] of ops) {
            const w = live.length > 0 ? live[pick % live.length] : undefined;
            if (op === 0 || !w) {
              const nw = r.open(1, 0);
              live.push(nw);
              model.set(nw, { gen, tracked: false, reads: 0, waits: 0 });
            } else if (op === 1) {
              r.close(w);
              live.splice(live.indexOf(w), 1);
              model.delete(w);
            } else if (op === 2) {
              r.setTracking(w, arg % 2 === 0);
              model.get(w)!.tracked = arg % 2 === 0;
            } else if (op === 3) {
              const m = model.get(w)!;
              r.read(w, false, () => readsAnswered++);
              if (m.gen !== gen) expectReads++;
              else m.reads++;
            } else if (op === 4) {
              const m = model.get(w)!;
              const value = arg % 3 === 0 ? gen + 1 : gen;
              try {
                r.write(w, le(value));
                expect(value).toBe(gen);
                m.gen = gen;
              } catch (err) {
                expect(errnoOf(err)).toBe('EINVAL');
                expect(value).not.toBe(gen);
              }
            } else if (op === 5) {
              const m = model.get(w)!;
              r.waitWatchers(w, 0, (err) => (err ? waitsIntr++ : waitsOk++));
              if (m.gen !== gen) expectIntr++;
              else if (outdatedModel() === 0) expectOk++;
              else m.waits++;
            } else if (op === 6) {
              const next = Math.max(arg, gen + 1);
              expect(r.bump(arg).generation).toBe(next);
              gen = next;
              for (const m of model.values()) {
                expectReads += m.reads;
                expectIntr += m.waits;
                m.reads = 0;
                m.waits = 0;
              }
            } else {
              expect(r.outdated).toBe(outdatedModel());
            }
            if (outdatedModel() === 0) {
              for (const m of model.values()) {
                expectOk += m.waits;
                m.waits = 0;
              }
            }
            expect(r.outdated).toBe(outdatedModel());
            expect(readsAnswered).toBe(expectReads);
            expect(waitsOk).toBe(expectOk);
            expect(waitsIntr).toBe(expectIntr);
            for (const x of live) expect(r.isOutdated(x)).toBe(model.get(x)!.gen !== gen);
          }
        },
      ),
      { seed: 13, numRuns: 300 },
    );
  });
});
