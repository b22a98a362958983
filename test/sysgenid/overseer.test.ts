/**
 * The overseer and the simulated guest watchers: bumpAndWait reports who
 * acknowledged and who timed out, watchers reseed their pool before they
 * acknowledge, stuck ones hold the overseer until its timeout. The service
 * runs in this process; every watcher is a real socket connection, run in
 * worker threads unless a test says otherwise.
 */
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, MisuseError } from '../../src/common/errors.js';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { GuestSysgenid } from '../../src/sysgenid/guest-sysgenid.js';
import { bumpAndWait, Overseer } from '../../src/sysgenid/overseer.js';
import { SysgenidService } from '../../src/sysgenid/service.js';
import { startWatchers, type WatcherFleet } from '../../src/sysgenid/watchers.js';
import { tempDir } from '../support/tmp.js';

let service: SysgenidService;
let socket: string;
const fleets: WatcherFleet[] = [];

beforeEach(async () => {
  const dir = tempDir('sysgenid-overseer-');
  socket = join(dir, 'sysgenid.sock');
  service = await SysgenidService.start({ socketPath: socket, counterFile: join(dir, 'sysgenid') });
});

afterEach(async () => {
  await Promise.all(fleets.splice(0).map((f) => f.close()));
  await service.stop();
});

async function fleet(n: number, options: { stuck?: number; threads?: number } = {}): Promise<WatcherFleet> {
  const f = await startWatchers(n, { socketPath: socket, ...options });
  fleets.push(f);
  return f;
}

describe('overseer bumpAndWait', () => {
  it('3 watchers, 1 stuck, timeout 500: 2 acked, 1 timed out, available only after the timeout', async () => {
    const f = await fleet(3, { stuck: 1 });
    const r = await bumpAndWait(socket, { watcherTimeoutMs: 500 });
    expect(r.generation).toBe(1);
    expect(r.watchersAcked).toBe(2);
    expect(r.watchersTimedOut).toBe(1);
    expect(r.timedOut).toBe(true);
    expect(r.timeToAvailableMs).toBeGreaterThanOrEqual(499); // the wait ended at its timer, not before
    expect(r.acked.map((w) => w.name).sort()).toEqual(['watcher-0', 'watcher-1']);
    expect(r.timedOutWatchers.map((w) => w.name)).toEqual(['watcher-2']);
    await f.told(1);
    const stats = f.snapshot();
    expect(stats.map((s) => [s.name, s.told, s.acknowledged])).toEqual([
      ['watcher-0', 1, 1],
      ['watcher-1', 1, 1],
      ['watcher-2', 1, 0],
    ]);
  });

  it('returns as soon as every tracked watcher acknowledged, and watchers reseed on every generation', async () => {
    const f = await fleet(5, { threads: 2 });
    const first = await bumpAndWait(socket, { watcherTimeoutMs: 0 });
    expect([first.watchersAcked, first.watchersTimedOut, first.timedOut]).toEqual([5, 0, false]);
    await f.told(1); // the watchers' reports cross a thread boundary after their acknowledgements
    const digests1 = f.snapshot().map((s) => s.poolDigest);
    const second = await bumpAndWait(socket, { min: 40, watcherTimeoutMs: 0 });
    expect(second.generation).toBe(40);
    expect(second.watchersAcked).toBe(5);
    await f.told(40);
    const after = f.snapshot();
    expect(after.every((s) => s.acknowledged === 2 && s.lastGeneration === 40)).toBe(true);
    for (const [i, s] of after.entries()) expect(s.poolDigest).not.toBe(digests1[i]);
    expect(new Set(after.map((s) => s.poolDigest)).size).toBe(5);
  });

  it('takes a bump by someone else during its wait (EINTR): acknowledges the newer generation and waits on', async () => {
    await fleet(2, { stuck: 1, threads: 0 });
    const overseer = await Overseer.connect(socket);
    const other = await SysgenidClient.connect(socket);
    try {
      const result = overseer.bumpAndWait({ watcherTimeoutMs: 1500 });
      // Once the overseer acknowledged generation 1 it is waiting (or about to): bump again.
      await expect
        .poll(async () =>
          (await other.listWatchers()).watchers.some(
            (w) => w.name === 'overseer' && w.acknowledged && w.generation === 1,
          ),
        )
        .toBe(true);
      expect((await other.bump()).generation).toBe(2);
      const r = await result;
      expect(r.generation).toBe(2);
      expect([r.watchersAcked, r.watchersTimedOut]).toEqual([1, 1]);
    } finally {
      await other.close();
      await overseer.close();
    }
  });

  it('reports 0 acked and 0 timed out when no watcher is tracked', async () => {
    const r = await bumpAndWait(socket, { watcherTimeoutMs: 100 });
    expect([r.watchersAcked, r.watchersTimedOut, r.timedOut]).toEqual([0, 0, false]);
  });

  it('refuses bad arguments, naming the field', async () => {
    await expect(bumpAndWait(socket, { watcherTimeoutMs: -1 })).rejects.toThrow(InvalidArgumentError);
    await expect(startWatchers(2, { socketPath: socket, stuck: 3 })).rejects.toThrow(/stuck watchers 3/);
    expect(service.generation).toBe(0);
  });
});

describe('SysgenidClient.generations', () => {
  it('yields each new generation once and refuses to go on without an acknowledgement', async () => {
    const c = await SysgenidClient.connect(socket);
    const bumper = await SysgenidClient.connect(socket);
    try {
      const it = c.generations();
      const next = it.next();
      await bumper.bump();
      expect((await next).value).toBe(1);
      await c.acknowledge(1);
      const next2 = it.next();
      await bumper.bump(9);
      expect((await next2).value).toBe(9);
      await expect(it.next()).rejects.toThrow(MisuseError);
    } finally {
      await bumper.close();
      await c.close();
    }
  });

  it('ends quietly when the client closes', async () => {
    const c = await SysgenidClient.connect(socket);
    const it = c.generations();
    const next = it.next();
    await c.close();
    expect(await next).toEqual({ done: true, value: undefined });
  });
});

describe('GuestSysgenid', () => {
  it('runs a guest sysgenid through a resume: 3 watchers, 1 stuck, timeout 500', async () => {
    const guest = await GuestSysgenid.start({ watchers: 3, stuck: 1 });
    try {
      const r = await guest.resume({ watcherTimeoutMs: 500 });
      expect([r.generation, r.watchersAcked, r.watchersTimedOut, r.timedOut]).toEqual([1, 2, 1, true]);
      expect(r.timeToAvailableMs).toBeGreaterThanOrEqual(499);
      await guest.fleet.told(1);
      expect(guest.fleet.snapshot().map((s) => s.acknowledged)).toEqual([1, 1, 0]);
    } finally {
      await guest.close();
    }
  });
});
