import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  data,
  decrypt,
  encrypt,
  guestRead,
  guestWrite,
  sameBytes,
  type Term,
  termShape,
  termText,
  transfer,
} from '../../src/explore/sev-model.js';

const machine = fc.constantFrom('source' as const, 'destination' as const);
const term: fc.Arbitrary<Term> = fc.letrec<{ t: Term }>((tie) => ({
  t: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.nat(5).map(data),
    fc.tuple(machine, tie('t')).map(([k, t]) => encrypt(k, t)),
    fc.tuple(machine, tie('t')).map(([k, t]) => decrypt(k, t)),
  ),
})).t;

describe('the symbolic SEV memory model', () => {
  it('XTS under one key is a permutation: decrypting what was encrypted gives it back, and the reverse', () => {
    fc.assert(
      fc.property(term, machine, (t, k) => {
        expect(sameBytes(decrypt(k, encrypt(k, t)), t)).toBe(true);
        expect(sameBytes(encrypt(k, decrypt(k, t)), t)).toBe(true);
      }),
    );
  });

  it('the two machines have different keys: nothing cancels across them', () => {
    const d = data(1);
    expect(sameBytes(decrypt('destination', encrypt('source', d)), d)).toBe(false);
    expect(sameBytes(encrypt('source', d), encrypt('destination', d))).toBe(false);
    expect(sameBytes(data(1), data(2))).toBe(false);
  });

  it('a page sent from the perspective of its c-bit reads the same at the destination', () => {
    fc.assert(
      fc.property(fc.nat(9), fc.boolean(), (id, encrypted) => {
        const raw = guestWrite('source', encrypted, data(id));
        const arrived = transfer(encrypted, raw);
        expect(sameBytes(guestRead('destination', encrypted, arrived), data(id))).toBe(true);
      }),
    );
  });

  it('a page sent from the wrong perspective reads as garbage at the destination', () => {
    fc.assert(
      fc.property(fc.nat(9), fc.boolean(), (id, encrypted) => {
        const raw = guestWrite('source', encrypted, data(id));
        const arrived = transfer(!encrypted, raw);
        expect(sameBytes(guestRead('destination', encrypted, arrived), data(id))).toBe(false);
      }),
    );
  });

  it('a converted page that was not rewritten keeps its bytes only if it is sent from its new c-bit', () => {
    // Written encrypted, then converted to shared: the guest reads the ciphertext.
    const raw = guestWrite('source', true, data(3));
    const atPause = guestRead('source', false, raw);
    expect(termText(atPause)).toBe('XTS[src](d3)');
    expect(sameBytes(guestRead('destination', false, transfer(false, raw)), atPause)).toBe(true);
    expect(sameBytes(guestRead('destination', false, transfer(true, raw)), atPause)).toBe(false);
  });

  it('shapes name data relative to the current write and keep the operators', () => {
    const t = encrypt('destination', decrypt('source', data(4)));
    expect(termShape(t, 4)).toBe('EdDsc');
    expect(termShape(t, 5)).toBe('EdDso');
    expect(termText(t)).toBe('XTS[dst](XTS⁻¹[src](d4))');
  });
});
