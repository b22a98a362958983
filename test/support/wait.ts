/**
 * Waiting for a condition instead of sleeping: a test that must see another
 * thread or process get somewhere waits for the evidence itself (a counter
 * reaching a value, a flag), checking on every timer turn. The deadline is an
 * upper bound against a hang, never a synchronization point: a slow machine
 * only makes the wait longer, and a condition that never holds fails with
 * what was awaited.
 */

/** Resolves once cond() holds; rejects naming `what` after timeoutMs. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
