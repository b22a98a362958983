/**
 * `sevtrack migrate --role destination` against the peers a real network
 * brings: silent clients, strays before the real source, stale and live
 * socket files. Every destination and source is a real CLI process.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/common/frames.js';
import { newMemoryKey } from '../../src/common/page-crypto.js';
import { PspSession } from '../../src/migration/psp.js';
import { encodeHello, MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import { type RunningCli, runCli, startCli, waitForStderr } from '../support/cli.js';
import { leaveStaleSocket } from '../support/stale-socket.js';
import { tempDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const running: RunningCli[] = [];
const sockets: net.Socket[] = [];
// Destinations still running after a test are killed, and cannot remove
// their temporary trackers: every CLI's TMPDIR is a directory of the test's own.
const savedTmp = process.env.TMPDIR;
beforeEach(() => {
  process.env.TMPDIR = tempDir();
});
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of running.splice(0)) if (c.child.exitCode === null) c.child.kill('SIGKILL');
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
});

type Transport = 'tcp' | 'unix';

function destinationArgs(transport: Transport, listen: string): string[] {
  return ['migrate', '--role', 'destination', '--transport', transport, '--listen', listen];
}

/** Starts a destination process; resolves with it and the address a source connects to. */
async function destination(
  transport: Transport,
  listen: string,
  extra: string[] = [],
): Promise<{ cli: RunningCli; address: string }> {
  const cli = startCli([...destinationArgs(transport, listen), '--json', ...extra]);
  running.push(cli);
  const m = await waitForStderr(cli, /destination listening on (\S+)/);
  return { cli, address: m[1] };
}

function source(transport: Transport, address: string): ReturnType<typeof runCli> {
  return runCli([
    'migrate',
    '--role',
    'source',
    '--transport',
    transport,
    '--connect',
    address,
    '--memory',
    '1M',
    '--json',
  ]);
}

/** A raw client of the destination, as a stray or a hand-driven source would be. */
async function dial(transport: Transport, address: string): Promise<net.Socket> {
  const s =
    transport === 'tcp' ? net.connect(Number(address.split(':')[1]), '127.0.0.1') : net.connect(address);
  sockets.push(s);
  await new Promise((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.on('error', () => {}); // the destination drops strays: a reset is expected
  return s;
}

/** The temporary trackers of destinations started in this test (their TMPDIR is the test's own). */
function trackerDirs(): string[] {
  return readdirSync(process.env.TMPDIR!).filter((n) => n.startsWith('sevtrack-dst-'));
}

function listenAddress(transport: Transport): string {
  return transport === 'tcp' ? '127.0.0.1:0' : join(tempDir(), 'd.sock');
}

describe('a --listen destination and its peers', () => {
  it('a destination started with --memory prepares that guest, migrates it, and refuses another size naming --memory', async () => {
    const same = await destination('unix', listenAddress('unix'), ['--memory', '1M']);
    const ok = await source('unix', same.address);
    expect(ok.code).toBe(0);
    expect(await same.cli.exit).toBe(0);
    expect(JSON.parse(same.cli.out()).verified).toBe(true);

    const other = await destination('unix', listenAddress('unix'), ['--memory', '2M']);
    const refused = await source('unix', other.address);
    expect(await other.cli.exit).toBe(2);
    expect(other.cli.err()).toMatch(
      /the source's guest is 1 MiB \(256 pages\) but this destination was started with --memory 2 MiB; start it with the source's --memory, or without --memory/,
    );
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/destination: the source's guest is 1 MiB/);
  });

  it('aborts (exit 3) a peer that connects and sends no handshake within --handshake-timeout', async () => {
    const { cli, address } = await destination('tcp', listenAddress('tcp'), ['--handshake-timeout', '500']);
    await dial('tcp', address);
    expect(await cli.exit).toBe(3);
    expect(cli.err()).toMatch(/connected but sent no handshake within 500 ms \(--handshake-timeout\)/);
  });

  it('aborts (exit 3) a source that goes silent after its handshake, after --peer-timeout', async () => {
    const { cli, address } = await destination('unix', listenAddress('unix'), ['--peer-timeout', '500']);
    const s = await dial('unix', address);
    const publicKey = new PspSession(newMemoryKey()).publicKey;
    const hello = encodeHello({
      npages: 16,
      vcpus: 1,
      protocol: 'safe',
      verify: 'strict',
      generation: 0,
      publicKey,
    });
    s.write(encodeFrame(MIGRATION_FRAME, Msg.HELLO, 0, hello));
    expect(await cli.exit).toBe(3);
    expect(cli.err()).toMatch(/the peer sent nothing for 500 ms \(--peer-timeout\)/);
  });

  for (const transport of ['tcp', 'unix'] as const) {
    it(`${transport}: strays before the real source do not use up the listener`, async () => {
      const { cli, address } = await destination(transport, listenAddress(transport));
      const garbage = await dial(transport, address);
      garbage.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      await waitForStderr(
        cli,
        /dropped a connection from .*not the migration stream's magic.*; still listening/,
      );
      (await dial(transport, address)).end(); // connects and hangs up without a word
      await waitForStderr(cli, /dropped a connection from .*closed the connection; still listening/);
      await dial(transport, address); // connects and stays silent while the source comes
      const src = await source(transport, address);
      expect(src.stderr).toBe('');
      expect(src.code).toBe(0);
      expect(JSON.parse(src.stdout)).toMatchObject({ verified: true });
      expect(await cli.exit).toBe(0);
      expect(JSON.parse(cli.out())).toMatchObject({ verified: true });
    });
  }

  it('replaces a stale socket file left by a killed destination', async () => {
    const path = join(tempDir(), 'stale.sock');
    leaveStaleSocket(path);
    expect(statSync(path).isSocket()).toBe(true);
    const { cli, address } = await destination('unix', path);
    const src = await source('unix', address);
    expect(src.code).toBe(0);
    expect(await cli.exit).toBe(0);
  });

  for (const transport of ['tcp', 'unix'] as const) {
    it(`${transport}: a second destination on a live address exits 2 saying so, and the first carries on`, async () => {
      const first = await destination(transport, listenAddress(transport));
      const second = await runCli(destinationArgs(transport, first.address));
      expect(second.code).toBe(2);
      expect(second.stderr).toMatch(
        transport === 'tcp'
          ? /is already in use on this machine; stop what listens there or choose another --listen address \[ERR_SOCKET_IN_USE\]/
          : /is held by a live server; stop it or choose another --listen path \[ERR_SOCKET_IN_USE\]/,
      );
      expect(second.stderr).not.toMatch(/ERR_PEER/);
      expect(trackerDirs()).toHaveLength(1); // the first's: the second removed the one it opened
      const src = await source(transport, first.address);
      expect(src.code).toBe(0);
      expect(await first.cli.exit).toBe(0);
      expect(trackerDirs()).toEqual([]);
    });
  }

  it('flags it cannot use are refused at start (exit 2 naming them): nothing listens and no tracker is left', async () => {
    const unix = listenAddress('unix');
    const cases: [string[], RegExp][] = [
      [
        ['migrate', '--role', 'destination', '--listen', unix],
        /--listen needs --transport unix or tcp .*\[ERR_INVALID_ARGUMENT\]/,
      ],
      [
        [...destinationArgs('unix', unix), '--then-connect', join(tempDir(), 'x'.repeat(120))],
        /--then-connect/,
      ],
      [
        [
          ...destinationArgs('unix', unix),
          '--backend',
          'kvm',
          '--then-connect',
          join(tempDir(), 'next.sock'),
        ],
        /--then-connect is not for --backend kvm/,
      ],
    ];
    for (const [args, error] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(error);
      expect(r.stderr).not.toMatch(/listening/);
      expect(existsSync(unix)).toBe(false);
      expect(trackerDirs()).toEqual([]);
    }
  });

  it('SIGINT to a destination mid-migration: it exits 3 naming the cancel and removes its temporary tracker; the source aborts, told why, its guest running', async () => {
    // Its log is created at the source's HELLO: the cancel lands mid-migration.
    const destLog = join(tempDir(), 'dest-log.db');
    const { cli: dest, address } = await destination('unix', listenAddress('unix'), ['--log', destLog]);
    expect(trackerDirs()).toHaveLength(1); // opened before listening
    // 16384 encrypted pages through a PSP of 500 pages/s: the bulk round alone takes half a minute.
    const src = runCli(
      ['migrate', '--role', 'source', '--transport', 'unix', '--connect', address].concat([
        '--memory',
        '64M',
        '--workload',
        'idle',
        '--psp-rate',
        '500',
        '--psp-batch',
        '64',
        '--json',
      ]),
    );
    await waitFor(() => existsSync(destLog), "the destination's log (the source's HELLO)");
    dest.child.kill('SIGINT');
    expect(await dest.exit).toBe(3);
    expect(dest.err()).toMatch(/SIGINT: cancelling the incoming migration/);
    expect(dest.err()).toMatch(/cancelled by SIGINT \[ERR_CANCELLED\]/);
    expect(trackerDirs()).toEqual([]);
    const s = await src;
    expect(s.code).toBe(3);
    // The destination said why before it closed: the source names the cancel, not a lost peer.
    expect(JSON.parse(s.stdout)).toMatchObject({
      aborted: true,
      sourceGuestRunning: true,
      reason: expect.stringContaining('the destination aborted: cancelled by SIGINT'),
    });
  }, 60_000);

  it('SIGINT to a destination still waiting for its source: it stops listening and exits 3', async () => {
    const listen = listenAddress('unix');
    const { cli: dest } = await destination('unix', listen);
    dest.child.kill('SIGINT');
    expect(await dest.exit).toBe(3);
    expect(dest.err()).toMatch(/cancelled by SIGINT \[ERR_CANCELLED\]/);
    expect(existsSync(listen)).toBe(false); // its socket file removed
    expect(trackerDirs()).toEqual([]); // so is the temporary tracker it opened before listening
  });

  it('a destination cancelled before its source came removes the --db file it created', async () => {
    const db = join(tempDir(), 'never-used.db');
    const { cli: dest } = await destination('unix', listenAddress('unix'), ['--db', db]);
    expect(existsSync(db)).toBe(true); // opened before listening
    dest.child.kill('SIGINT');
    expect(await dest.exit).toBe(3);
    expect(existsSync(db)).toBe(false);
    expect(existsSync(`${db}-wal`)).toBe(false);
  });

  it('a --db that already holds a migrated guest is refused before listening (exit 2 naming --db), not by closing on the source', async () => {
    const db = join(tempDir(), 'dest.db');
    const first = await destination('unix', listenAddress('unix'), ['--db', db]);
    expect((await source('unix', first.address)).code).toBe(0);
    expect(await first.cli.exit).toBe(0);
    const listen = listenAddress('unix');
    const again = await runCli([...destinationArgs('unix', listen), '--db', db]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already holds vm 1 .*; choose a new --db file \[ERR_INVALID_ARGUMENT\]/);
    expect(again.stderr).not.toMatch(/listening/);
    expect(existsSync(listen)).toBe(false);
  });
});
