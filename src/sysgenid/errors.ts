/**
 * sysgenid's errors carry the errno the kernel proposal returned for the same
 * case (docs/sysgenid.md, "Errors"), so a caller that knows /dev/sysgenid
 * finds the same answers here. A request the caller got wrong or may not make
 * is a misuse; a state the caller must react to (would block, interrupted by
 * a new generation, timed out) is a runtime failure.
 */
import { MisuseError, RuntimeFailure } from '../common/errors.js';

/** Linux errno values of every status the service returns (0 = ok). */
export const Errno = {
  EINTR: 4,
  EAGAIN: 11,
  EACCES: 13,
  EINVAL: 22,
  ENOTTY: 25,
  ETIME: 62,
  EPROTO: 71,
  EOVERFLOW: 75,
  ENOBUFS: 105,
} as const;

export type ErrnoName = keyof typeof Errno;

/** The errno name of a status value, or `errno N` for one sysgenid never sends. */
export function errnoName(status: number): string {
  const hit = Object.entries(Errno).find(([, v]) => v === status);
  return hit ? hit[0] : `errno ${status}`;
}

/** Refused as bad or unprivileged input (EINVAL, ENOBUFS, EACCES, EOVERFLOW, ENOTTY, EPROTO). Nothing changed. */
export class SysgenidRequestError extends MisuseError {
  readonly errno: string;
  constructor(errno: string, message: string) {
    super(`ERR_SYSGENID_${errno}`, message);
    this.errno = errno;
  }
}

/**
 * The request was valid but the state says no: EAGAIN (a non-blocking read
 * while up to date), EINTR (the caller is or became outdated while waiting),
 * ETIME (tracked watchers still outdated at the timeout).
 */
export class SysgenidStateError extends RuntimeFailure {
  readonly errno: string;
  constructor(errno: string, message: string) {
    super(`ERR_SYSGENID_${errno}`, message);
    this.errno = errno;
  }
}

const STATE_ERRNOS: readonly string[] = ['EAGAIN', 'EINTR', 'ETIME'];

/** The error class for an errno name: state errors for EAGAIN/EINTR/ETIME, request errors otherwise. */
export function sysgenidError(errno: string, message: string): SysgenidRequestError | SysgenidStateError {
  return STATE_ERRNOS.includes(errno)
    ? new SysgenidStateError(errno, message)
    : new SysgenidRequestError(errno, message);
}

/** The errno name of an error thrown by sysgenid code, or undefined for any other error. */
export function errnoOf(err: unknown): string | undefined {
  return err instanceof SysgenidRequestError || err instanceof SysgenidStateError ? err.errno : undefined;
}
