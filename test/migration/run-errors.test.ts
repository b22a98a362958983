/**
 * Refusals before anything starts (src/migration/guest-size.ts,
 * run-migration.ts, psp.ts): a guest size that is not whole pages or more
 * than this machine holds is bad input naming the flag and the limit; a
 * source that refuses its size closes the channel so its peer learns at
 * once; a PSP key of the wrong length is named.
 */

import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, MisuseError } from '../../src/common/errors.js';
import { memoryChannelPair } from '../../src/migration/channel.js';
import { guestPagesFor, MAX_GUEST_PAGES } from '../../src/migration/guest-size.js';
import { PspSession } from '../../src/migration/psp.js';
import { DEFAULT_PARAMS, migrateLocally, runSource } from '../../src/migration/run-migration.js';
import { MIGRATION_FRAME } from '../../src/migration/stream.js';
import { kvmSkipReason } from '../../src/vmm/kvm/availability.js';
import { tempDir } from '../support/tmp.js';

const GiB = 2 ** 30;

/** The InvalidArgumentError fn throws. */
function refusal(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidArgumentError);
    return e as InvalidArgumentError;
  }
  throw new Error('not refused');
}

describe('guest sizes', () => {
  it('whole pages from one page up; below one page, a fraction or NaN is refused naming the field', () => {
    expect(guestPagesFor(4096, { guests: 1, ramBytes: GiB })).toBe(1);
    for (const bytes of [0, 4095, -4096, Number.NaN, 1.5 * 4096]) {
      const e = refusal(() => guestPagesFor(bytes, { guests: 1, field: '--memory' }));
      expect(e.field).toBe('--memory');
      expect(e.message).toBe(
        bytes === 1.5 * 4096
          ? `--memory ${bytes} is not a multiple of 4 KiB (one page); round it to whole pages`
          : `--memory ${bytes} is less than one page; the smallest guest is 4K`,
      );
    }
    expect(refusal(() => guestPagesFor(8192 + 512, { guests: 1 })).message).toMatch(
      /is not a multiple of 4 KiB/,
    );
  });

  it('more than this machine holds: the limit and, for two guests in one process, the two-process way out', () => {
    const ram = 10 * GiB; // guests may take 90%: 9 GiB
    expect(guestPagesFor(9 * GiB, { guests: 1, ramBytes: ram })).toBe((9 * GiB) / 4096);
    expect(refusal(() => guestPagesFor(9 * GiB + 4096, { guests: 1, ramBytes: ram })).message).toBe(
      '--memory 9.0 GiB is more than one guest can hold (this machine has 10 GiB of RAM and guests may take 90% of it); choose --memory 9 GiB or less',
    );
    expect(refusal(() => guestPagesFor(5 * GiB, { guests: 2, ramBytes: ram })).message).toBe(
      '--memory 5 GiB is more than 2 guests of this size in one process (source and destination) can hold ' +
        '(this machine has 10 GiB of RAM and guests may take 90% of it); choose --memory 4.5 GiB or less, ' +
        'or run source and destination as two processes (--role) for up to 9 GiB',
    );
  });

  it('past the simulated backend’s 1 TiB, whatever the RAM', () => {
    const tib = MAX_GUEST_PAGES * 4096;
    expect(guestPagesFor(tib, { guests: 1, ramBytes: 4 * tib })).toBe(MAX_GUEST_PAGES);
    expect(
      refusal(() => guestPagesFor(tib + 4096, { guests: 1, ramBytes: 4 * tib, field: '--size' })).message,
    ).toBe(
      '--size 1.0 TiB is more than one guest can hold (the simulated backend addresses 1 TiB); choose --size 1 TiB or less',
    );
  });
});

describe('refusals before a migration starts', () => {
  it('a source refusing its guest size closes the channel: the destination learns at once', async () => {
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const e = await runSource({ ...DEFAULT_PARAMS, memoryBytes: 4096 + 1 }, a).catch((err) => err);
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect(e.field).toBe('--memory');
    await expect(b.next(60_000)).rejects.toThrow('the peer closed the connection');
  });

  it('a one-process run refuses a size that two guests cannot share before starting anything', async () => {
    const e = await migrateLocally({ ...DEFAULT_PARAMS, memoryBytes: MAX_GUEST_PAGES * 4096 }).catch(
      (err) => err,
    );
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect(e.message).toMatch(
      /2 guests of this size in one process .* or run source and destination as two processes \(--role\)/,
    );
  });

  it('a PSP peer key that is not 32 bytes is refused naming the key', () => {
    const psp = new PspSession(new Uint8Array(64));
    const e = refusal(() => psp.sendStart(new Uint8Array(31)));
    expect(e.field).toBe('public key');
    expect(e.message).toBe('an X25519 public key is 32 bytes, got 31');
    // Nothing was agreed: the session still refuses to seal.
    expect(() => psp.sendUpdateData(new Uint8Array(4096), new Float64Array([0]))).toThrow(
      'PSP: SEND_START/RECEIVE_START has not run',
    );
  });

  const kvmSkip = kvmSkipReason();
  for (const [backend, transport] of [
    ['sim', 'inproc'],
    ['sim', 'unix'],
    ['sim', 'tcp'],
    ['kvm', 'inproc'],
  ] as const) {
    it.skipIf(backend === 'kvm' && kvmSkip)(
      `${backend} over ${transport}: a --db that already holds the destination's VM is refused (the destination's own error, a misuse), not waited on`,
      async () => {
        const db = join(tempDir(), 'dest.db');
        const workload = backend === 'kvm' ? 'churn' : DEFAULT_PARAMS.workload;
        const p = { ...DEFAULT_PARAMS, backend, transport, workload, memoryBytes: 4 * 2 ** 20, db };
        const first = await migrateLocally(p);
        expect(first.summary.verified).toBe(true);
        // Before, the source sent its HELLO to a destination that had already
        // failed and waited out --peer-timeout (30 s, beyond this test's 20 s).
        const e = await migrateLocally(p).catch((err) => err);
        expect(e).toBeInstanceOf(MisuseError);
        expect(e.code).toBe('ERR_INVALID_ARGUMENT');
        expect(e.message).toBe(
          `${db} already holds vm 1 (a guest migrated here before); choose a new --db file`,
        );
      },
      20_000,
    );
  }
});
