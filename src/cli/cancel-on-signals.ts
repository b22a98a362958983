/**
 * SIGINT and SIGTERM cancel a running migration cleanly instead of killing
 * the process: the first one aborts the returned signal with a
 * CancelledError naming it, so the source stops between two frames, resumes
 * its guest if it had paused it, tells the destination and records the abort
 * in its log (exit 3, as any abort). Past the point where the destination
 * may resume, the migration finishes instead. A second signal exits at once
 * (128 + its number), for an operator who will not wait.
 */
import { constants } from 'node:os';
import { CancelledError } from '../common/errors.js';

export interface SignalCancel {
  readonly signal: AbortSignal;
  /** Removes the handlers (the process's default behaviour returns). */
  dispose(): void;
}

export function cancelOnSignals(what: string): SignalCancel {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(128 + constants.signals[name]);
    process.stderr.write(`sevtrack: ${name}: cancelling ${what}; send it again to exit at once\n`);
    controller.abort(new CancelledError(`cancelled by ${name}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose() {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
