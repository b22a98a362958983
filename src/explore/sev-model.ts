/**
 * The SEV memory model of the explorer, symbolic instead of bytes: what a
 * page holds is a term over guest data and the two machines' memory
 * encryption keys, so a page sent from the wrong perspective really yields
 * something else at the destination, and verification compares what each
 * guest would read (docs/design.md §4, in miniature).
 *
 * - A guest write of data d under c-bit 1 stores XTS(source key, d) in
 *   host-visible memory; under c-bit 0 it stores d itself.
 * - A guest read under c-bit 1 decrypts with the machine's key; under c-bit 0
 *   it returns the raw bytes.
 * - Sending a page the host believes encrypted goes through the PSP: decrypt
 *   with the source key, encrypt with the destination key (the transport seal
 *   in between cancels out). A page believed shared is copied raw.
 *
 * XTS with a fixed tweak (the page's address) is a permutation, so
 * encrypting what was decrypted with the same key (or the reverse) gives the
 * original back; nothing else simplifies. The two keys differ, as on real SEV.
 */

export type Machine = 'source' | 'destination';

/** Content of a page: guest data, or the encryption or decryption of a term under a machine's key. */
export type Term =
  | { readonly op: 'data'; readonly id: number }
  | { readonly op: 'enc' | 'dec'; readonly key: Machine; readonly of: Term };

/** The data the guest wrote with write number `id` (numbered per run). */
export function data(id: number): Term {
  return { op: 'data', id };
}

/** XTS encryption of `t` under `key`; undoes a decryption under the same key. */
export function encrypt(key: Machine, t: Term): Term {
  if (t.op === 'dec' && t.key === key) return t.of;
  return { op: 'enc', key, of: t };
}

/** XTS decryption of `t` under `key`; undoes an encryption under the same key. */
export function decrypt(key: Machine, t: Term): Term {
  if (t.op === 'enc' && t.key === key) return t.of;
  return { op: 'dec', key, of: t };
}

/** Whether two terms are the same bytes (terms are kept in normal form, so structural). */
export function sameBytes(a: Term, b: Term): boolean {
  if (a === b) return true;
  if (a.op === 'data') return b.op === 'data' && a.id === b.id;
  if (b.op === 'data') return false;
  return a.op === b.op && a.key === b.key && sameBytes(a.of, b.of);
}

/** What a guest write of `t` under c-bit `encrypted` stores in `machine`'s memory. */
export function guestWrite(machine: Machine, encrypted: boolean, t: Term): Term {
  return encrypted ? encrypt(machine, t) : t;
}

/** What a guest reads from raw memory `raw` of `machine` under c-bit `encrypted`. */
export function guestRead(machine: Machine, encrypted: boolean, raw: Term): Term {
  return encrypted ? decrypt(machine, raw) : raw;
}

/**
 * What the destination stores for a source page `raw` sent from the
 * perspective `encrypted` (the host's belief): through the PSP
 * (SEND_UPDATE_DATA / RECEIVE_UPDATE_DATA) when encrypted, raw otherwise.
 */
export function transfer(encrypted: boolean, raw: Term): Term {
  return encrypted ? encrypt('destination', decrypt('source', raw)) : raw;
}

/**
 * A short readable form: `d3` for data, `XTS[src](d3)` and `XTS⁻¹[dst](…)`
 * for encryption and decryption; `id` maps data numbers to names.
 */
export function termText(t: Term, id: (n: number) => string = (n) => `d${n}`): string {
  if (t.op === 'data') return id(t.id);
  const key = t.key === 'source' ? 'src' : 'dst';
  return `${t.op === 'enc' ? 'XTS' : 'XTS⁻¹'}[${key}](${termText(t.of, id)})`;
}

/**
 * A canonical key for a term, with data numbers replaced by `c` when equal to
 * `current` and `o` otherwise: two runs whose terms differ only in old data
 * behave alike from here on (old data never comes back), which is what the
 * exhaustive search's state dedup relies on.
 */
export function termShape(t: Term, current: number): string {
  if (t.op === 'data') return t.id === current ? 'c' : 'o';
  return `${t.op === 'enc' ? 'E' : 'D'}${t.key === 'source' ? 's' : 'd'}${termShape(t.of, current)}`;
}
