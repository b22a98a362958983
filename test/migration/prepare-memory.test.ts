import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../src/common/ranges.js';
import { prepareGuestMemory } from '../../src/migration/run-destination.js';

/** This process's resident memory (VmRSS), in bytes. */
function rss(): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return Number(kb?.[1]) * 1024;
}

describe('prepareGuestMemory (a destination guest prepared before its source connects)', () => {
  it('faults every page of the guest in, writable, and leaves it zeroed', async () => {
    const npages = 16_384; // 64 MiB
    const before = rss();
    const memory = await prepareGuestMemory(npages);
    expect(rss() - before).toBeGreaterThan(0.9 * npages * PAGE_SIZE);
    expect(memory.npages).toBe(npages);
    expect(memory.bytes.every((b) => b === 0)).toBe(true);
  });

  it('a cancel stops it between two steps, with the reason, before the rest of the guest is faulted in', async () => {
    const npages = 262_144; // 1 GiB: hundreds of steps
    const controller = new AbortController();
    const reason = new Error('the run ended before the source connected');
    const before = rss();
    const preparing = prepareGuestMemory(npages, controller.signal);
    setImmediate(() => controller.abort(reason)); // after its first step
    await expect(preparing).rejects.toBe(reason);
    expect(rss() - before).toBeLessThan(0.25 * npages * PAGE_SIZE);
  });

  it('refuses a guest this machine cannot hold, naming the limit, before allocating', async () => {
    await expect(prepareGuestMemory(2 ** 28 + 1)).rejects.toThrow(/--memory/);
  });
});
