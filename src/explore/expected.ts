/**
 * The outcomes docs/design.md §3 expects of each protocol variant, in one
 * place: the explorer's verdict (and its exit code) compares against this
 * table, the tests pin it, docs/explore.md explains it.
 *
 * `never`: no schedule may corrupt a page. `corrupts`: the explorer must
 * find at least one schedule that does (a negative control that never fails
 * proves nothing).
 */
import type { Protocol, VerifyMode } from '../migration/stream.js';
import type { Contract } from './model.js';

export type Expectation = 'never' | 'corrupts';

export const EXPECTED: Record<Contract, Record<Protocol, Record<VerifyMode, Expectation>>> = {
  // The guest keeps rule 5.
  kept: {
    safe: { strict: 'never', defined: 'never' },
    // Converted pages that are never rewritten keep their old perspective:
    // undefined data, which only the strict check compares.
    'no-cbit-dirty': { strict: 'corrupts', defined: 'never' },
    'cbit-first': { strict: 'corrupts', defined: 'corrupts' },
    'no-final-diff': { strict: 'corrupts', defined: 'corrupts' },
    naive: { strict: 'corrupts', defined: 'corrupts' },
  },
  // A vCPU writes under the new c-bit while another's notification is in
  // flight and the pause lands in between: no host-side rule can see a
  // change that has not reached it, so even safe corrupts, in both modes.
  broken: {
    safe: { strict: 'corrupts', defined: 'corrupts' },
    'no-cbit-dirty': { strict: 'corrupts', defined: 'corrupts' },
    'cbit-first': { strict: 'corrupts', defined: 'corrupts' },
    'no-final-diff': { strict: 'corrupts', defined: 'corrupts' },
    naive: { strict: 'corrupts', defined: 'corrupts' },
  },
};

/** What the table expects of `protocol` under `contract` and `verify`. */
export function expectedOutcome(protocol: Protocol, contract: Contract, verify: VerifyMode): Expectation {
  return EXPECTED[contract][protocol][verify];
}

/** Whether `corrupted` outcomes out of a run meet the expectation. */
export function meetsExpectation(expected: Expectation, corrupted: number | bigint): boolean {
  const found = typeof corrupted === 'bigint' ? corrupted > 0n : corrupted > 0;
  return expected === 'never' ? !found : found;
}
