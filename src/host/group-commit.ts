/**
 * Group commit (docs/design.md §6): callers that applied changes to a CbitStore
 * wait here; one commit per event-loop turn makes every change applied so far
 * durable, and only then are the waiters told. If the commit fails, the
 * store has dropped the uncommitted changes and every waiter is told so.
 */
import type { CbitStore } from './cbit-store.js';

interface Waiter {
  done: () => void;
  fail: (err: Error) => void;
}

export class GroupCommit {
  private waiters: Waiter[] = [];
  private scheduled = false;

  /** onError sees each failed commit once (the waiters each get it too). */
  constructor(
    private readonly store: CbitStore,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  /** Calls done once the changes applied so far are committed, fail if that commit fails. */
  whenDurable(done: () => void, fail: (err: Error) => void): void {
    this.waiters.push({ done, fail });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /**
   * Commits now and settles every waiter. Anything that must order after the
   * changes applied so far (a sync, a query, shutdown) calls this first.
   */
  flush(): void {
    this.scheduled = false;
    if (this.waiters.length === 0 && !this.store.hasPending) return;
    const group = this.waiters;
    this.waiters = [];
    try {
      this.store.commit();
    } catch (err) {
      this.onError(err as Error);
      for (const w of group) w.fail(err as Error);
      return;
    }
    for (const w of group) w.done();
  }
}
