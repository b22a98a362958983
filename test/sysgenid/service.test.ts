/**
 * The acceptance tests of the sysgenid service, with real sockets and
 * several processes: the service runs as `sevtrack sysgenid serve` in its own
 * process; watchers are connections from this process and from CLI and C
 * client processes.
 */
import { spawn } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { errnoOf } from '../../src/sysgenid/errors.js';
import { ROOT, runCli } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';
import { type SysgenidServe, startSysgenidServe, waitForOutput } from './serve-process.js';

let serve: SysgenidServe;
const clients: SysgenidClient[] = [];

async function watcher(tracked = false): Promise<SysgenidClient> {
  const c = await SysgenidClient.connect(serve.socket);
  clients.push(c);
  if (tracked) await c.setTracking(true);
  return c;
}

async function failure(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return errnoOf(err) ?? (err as Error).message;
  }
  return undefined;
}

/** Bumps through a connection of this process (root here, or an allowed uid). */
async function bump(min = 0): Promise<number> {
  const c = await watcher();
  return (await c.bump(min)).generation;
}

/** Bumps from another process (the CLI), as an overseer would. */
async function bumpCli(min = 0): Promise<number> {
  const r = await runCli(['sysgenid', 'bump', '--socket', serve.socket, '--min', String(min), '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).generation;
}

beforeEach(async () => {
  serve = await startSysgenidServe(tempDir('sysgenid-'));
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  expect(await serve.stop()).toBe(0);
});

describe('sysgenid service', () => {
  it('blocking read waits for a bump from another process; non-blocking read is EAGAIN; reading never acknowledges', async () => {
    const w = await watcher();
    expect(await w.get()).toBe(0);
    expect(await failure(w.read({ nonBlocking: true }))).toBe('EAGAIN');
    expect(await w.readable()).toBe(false);
    let answered: number | undefined;
    const pending = w.read().then((g) => {
      answered = g;
      return g;
    });
    expect(await w.get()).toBe(0); // a later request on the same watcher is answered while the read waits
    expect(answered).toBeUndefined();
    expect(await bumpCli()).toBe(1);
    expect(await pending).toBe(1);
    // Not acknowledged: every read returns at once, and the watcher stays readable.
    expect(await w.read()).toBe(1);
    expect(await w.read({ nonBlocking: true })).toBe(1);
    expect(await w.readable()).toBe(true);
    await w.acknowledge(1);
    expect(await w.readable()).toBe(false);
    expect(await failure(w.read({ nonBlocking: true }))).toBe('EAGAIN');
  });

  it('acknowledges only exactly the 4-byte current value: EINVAL, ENOBUFS, and nothing changes', async () => {
    const w = await watcher(true);
    await bump();
    expect(await w.outdated()).toBe(1);
    expect(await failure(w.acknowledge(0))).toBe('EINVAL'); // stale
    expect(await failure(w.acknowledge(2))).toBe('EINVAL'); // from the future
    expect(await failure(w.write(Uint8Array.of(1, 0, 0)))).toBe('ENOBUFS');
    expect(await failure(w.write(Uint8Array.of(1, 0, 0, 0, 0)))).toBe('ENOBUFS');
    expect(await failure(w.write(new Uint8Array(0)))).toBe('ENOBUFS');
    expect(await w.outdated()).toBe(1);
    expect(await w.readable()).toBe(true);
    expect(await w.write(Uint8Array.of(1, 0, 0, 0))).toBe(4);
    expect(await w.outdated()).toBe(0);
    await w.acknowledge(1); // acknowledging again is harmless
    expect(await w.outdated()).toBe(0);
  });

  it('counts only tracked outdated watchers; tracking an outdated watcher adds it, untracking removes it', async () => {
    const tracked = await watcher(true);
    const untracked = await watcher();
    const observer = await watcher();
    expect(await observer.outdated()).toBe(0);
    await bump();
    expect(await observer.outdated()).toBe(1);
    await untracked.setTracking(true); // already outdated: joins the count
    expect(await observer.outdated()).toBe(2);
    await untracked.setTracking(false);
    expect(await observer.outdated()).toBe(1);
    await untracked.setTracking(true);
    await untracked.acknowledge(1);
    expect(await observer.outdated()).toBe(1);
    await tracked.acknowledge(1);
    expect(await observer.outdated()).toBe(0);
    // A watcher that connects after the bump is up to date.
    const late = await watcher(true);
    expect(await late.readable()).toBe(false);
    expect(await observer.outdated()).toBe(0);
  });

  it('waits for tracked watchers: ETIME at the timeout, success once the last one acknowledges', async () => {
    const overseer = await watcher();
    const a = await watcher(true);
    const b = await watcher(true);
    const g = await bump();
    await overseer.acknowledge(g);
    await a.acknowledge(g);
    expect(await failure(overseer.waitWatchers(50))).toBe('ETIME');
    expect(await overseer.outdated()).toBe(1);
    let done = false;
    const forever = overseer.waitWatchers(0).then(() => {
      done = true;
    });
    expect(await overseer.outdated()).toBe(1);
    expect(done).toBe(false);
    await b.acknowledge(g);
    await forever;
    expect(done).toBe(true);
    await overseer.waitWatchers(10); // nothing outdated: returns at once
  });

  it('interrupts a wait (EINTR) when the caller is outdated, or becomes outdated while waiting', async () => {
    const caller = await watcher();
    const stuck = await watcher(true);
    await bump();
    expect(await failure(caller.waitWatchers(0))).toBe('EINTR'); // is outdated
    await caller.acknowledge(1);
    const waiting = failure(caller.waitWatchers(0));
    await bump(); // becomes outdated while waiting
    expect(await waiting).toBe('EINTR');
    expect(await stuck.outdated()).toBe(1);
  });

  it('bumps to max(min, current + 1): a minimum below the current value still increments, above it jumps', async () => {
    const c = await watcher();
    expect(await bump(0)).toBe(1);
    expect(await bump(7)).toBe(7);
    expect(await bump(3)).toBe(8);
    expect(await bump(8)).toBe(9);
    expect(await c.get()).toBe(9);
  });

  it('drops a disconnected outdated watcher from the count and releases waiters', async () => {
    const overseer = await watcher();
    const leaving = await SysgenidClient.connect(serve.socket);
    await leaving.setTracking(true);
    const staying = await watcher(true);
    const g = await bump();
    await overseer.acknowledge(g);
    await staying.acknowledge(g);
    expect(await overseer.outdated()).toBe(1);
    const waited = overseer.waitWatchers(0);
    await leaving.close();
    await waited;
    expect(await overseer.outdated()).toBe(0);
  });

  it('keeps the counter file current in place: same inode, one page, little-endian u32 at 0, mtime touched', async () => {
    const before = statSync(serve.counterFile);
    expect(before.size).toBe(4096);
    expect(readFileSync(serve.counterFile).readUInt32LE(0)).toBe(0);
    await bump(41);
    const after = statSync(serve.counterFile);
    expect(after.ino).toBe(before.ino);
    expect(after.size).toBe(4096);
    expect(after.mtimeMs).toBeGreaterThanOrEqual(before.mtimeMs);
    const page = readFileSync(serve.counterFile);
    expect(page.readUInt32LE(0)).toBe(41);
    expect(page.readUInt32LE(8)).toBe(0x43494753);
    expect(page.readUInt16LE(12)).toBe(1);
  });

  it('an independent C process mapping the counter file sees each new value', async () => {
    const exe = join(ROOT, 'build/Release/sysgenid-watch');
    const child = spawn(exe, [serve.counterFile, '4'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitForOutput(() => out, /generation 0\n/);
    for (const min of [0, 0, 10, 0]) {
      const g = await bumpCli(min);
      await waitForOutput(() => out, new RegExp(`generation ${g}\\n`));
    }
    expect(await exited).toBe(0);
    expect(out).toBe('generation 0\ngeneration 1\ngeneration 2\ngeneration 10\ngeneration 11\n');
  });

  it('creates the socket 0600 by default', () => {
    expect(statSync(serve.socket).mode & 0o777).toBe(0o600);
  });
});
