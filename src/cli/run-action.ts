/**
 * The CLI's error boundary: every command's action runs through here, which
 * turns errors into one line on stderr and the exit code the docs/design.md §9
 * contract gives (0 ok, 1 a check failed, 2 bad input or usage, 3 aborted).
 */
import { MisuseError, SevtrackError } from '../common/errors.js';

export const EXIT_OK = 0;
export const EXIT_CHECK_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_ABORTED = 3;

/** Thrown by a command whose operation ran but whose check failed (exit 1). */
export class CheckFailedError extends SevtrackError {
  constructor(message: string) {
    super('ERR_CHECK_FAILED', message);
  }
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof CheckFailedError) return EXIT_CHECK_FAILED;
  if (err instanceof MisuseError) return EXIT_USAGE;
  return EXIT_ABORTED;
}

/** Wraps a command action: awaits it, sets process.exitCode, prints errors as one line. */
export function runAction<A extends unknown[]>(
  action: (...args: A) => Promise<number | undefined> | number | undefined,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      const code = await action(...args);
      process.exitCode = code ?? EXIT_OK;
    } catch (err) {
      const code = err instanceof SevtrackError ? ` [${err.code}]` : '';
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`sevtrack: ${message}${code}\n`);
      process.exitCode = exitCodeFor(err);
    }
  };
}
