/**
 * Runs a call into the kvm part of the native addon and turns its errors
 * into the typed tree of src/common/errors.ts: ERR_KVM_UNAVAILABLE becomes
 * KvmUnavailableError, ERR_INVALID_ARGUMENT InvalidArgumentError, every other
 * native failure KvmError carrying the errno and what failed.
 */
import { InvalidArgumentError, KvmError, KvmUnavailableError, SevtrackError } from '../../common/errors.js';

interface NativeError extends Error {
  code?: string;
  errno?: number;
  errnoName?: string;
}

export function translateNativeError(err: unknown, field = 'state'): Error {
  if (err instanceof SevtrackError || !(err instanceof Error)) return err as Error;
  const e = err as NativeError;
  if (e.code === 'ERR_KVM_UNAVAILABLE') return new KvmUnavailableError(e.message);
  if (e.code === 'ERR_INVALID_ARGUMENT' || e instanceof RangeError || e instanceof TypeError)
    return new InvalidArgumentError(field, e.message);
  return new KvmError(e.message, e.errno, e.errnoName, { cause: err });
}

/** fn(), with native errors translated (field names the argument for input errors). */
export function nativeCall<T>(fn: () => T, field?: string): T {
  try {
    return fn();
  } catch (err) {
    throw translateNativeError(err, field);
  }
}
