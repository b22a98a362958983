/** Parsing of flags whose value is one of a fixed list of names. */
import { InvalidArgumentError } from '../common/errors.js';

/** Returns `value` if it is one of `allowed`; otherwise throws InvalidArgumentError naming `flag` and the choices. */
export function oneOf<T extends string>(value: string, allowed: readonly T[], flag: string): T {
  if (!(allowed as readonly string[]).includes(value))
    throw new InvalidArgumentError(flag, `${flag} "${value}" is not one of ${allowed.join(', ')}`);
  return value as T;
}
