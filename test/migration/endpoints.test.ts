import { statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, MisuseError, PeerError } from '../../src/common/errors.js';
import { encodeFrame } from '../../src/common/frames.js';
import { newMemoryKey } from '../../src/common/page-crypto.js';
import {
  connectChannel,
  type Endpoint,
  type Listener,
  listenChannel,
  parseEndpoint,
} from '../../src/migration/endpoints.js';
import { PspSession } from '../../src/migration/psp.js';
import { runDestination } from '../../src/migration/run-destination.js';
import { encodeHello, MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import { leaveStaleSocket } from '../support/stale-socket.js';
import { tempDir } from '../support/tmp.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A client socket, connected; destroyed after the test. */
async function dial(e: Endpoint): Promise<net.Socket> {
  const s = e.kind === 'tcp' ? net.connect(e.port, e.host) : net.connect(e.path);
  cleanups.push(() => s.destroy());
  await new Promise((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.on('error', () => {}); // a dropped stray sees ECONNRESET: expected, the tests check the close
  return s;
}

/** Resolves when the socket is closed by the other end. */
function closed(s: net.Socket): Promise<void> {
  return new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));
}

function hello(npages = 1): Uint8Array {
  const psp = new PspSession(newMemoryKey());
  return encodeHello({
    npages,
    vcpus: 1,
    protocol: 'safe',
    verify: 'strict',
    generation: 0,
    publicKey: psp.publicKey,
  });
}

async function listen(e: Endpoint, strays: string[] = [], handshakeTimeoutMs = 10_000): Promise<Listener> {
  const l = await listenChannel(e, {
    peerTimeoutMs: 5000,
    handshakeTimeoutMs,
    onStray: (r) => strays.push(r),
  });
  cleanups.push(() => l.close());
  return l;
}

const kinds = (): [string, () => Endpoint][] => [
  ['tcp', () => ({ kind: 'tcp', host: '127.0.0.1', port: 0 })],
  ['unix', () => ({ kind: 'unix', path: join(tempDir(), 'd.sock') })],
];

describe('a listening destination and stray connections', () => {
  for (const [kind, endpoint] of kinds()) {
    it(`${kind}: drops strays (silent then closed, garbage, wrong magic) and keeps listening for the source`, async () => {
      const strays: string[] = [];
      const l = await listen(endpoint(), strays);
      const accepted = l.accept();
      // A probe that connects and closes without a word.
      (await dial(l.endpoint)).end();
      // A line of text, shorter than a frame header: dropped at its first 4 bytes.
      const garbage = await dial(l.endpoint);
      garbage.write('GET / HTTP/1.0');
      await closed(garbage);
      // A whole frame of another protocol (the host service's magic).
      const other = await dial(l.endpoint);
      other.write(encodeFrame({ ...MIGRATION_FRAME, magic: 0x54535653 }, 1, 0, new Uint8Array(4)));
      await closed(other);
      // A connection that holds on silently while the source arrives.
      const silent = await dial(l.endpoint);
      const source = await dial(l.endpoint);
      source.write(encodeFrame(MIGRATION_FRAME, Msg.HELLO, 0, hello()));
      const ch = await accepted;
      expect((await ch.next(1000)).type).toBe(Msg.HELLO);
      await closed(silent); // dropped once the source spoke
      expect(strays.join('\n')).toMatch(/closed the connection/);
      expect(strays.join('\n')).toMatch(/sent 0x47455420, not the migration stream's magic "SVMG"/);
      expect(strays.join('\n')).toMatch(/sent 0x53565354, not the migration stream's magic/);
      expect(strays).toHaveLength(3);
      // One migration per listener: later connections are refused.
      await expect(dial(l.endpoint)).rejects.toMatchObject({
        code: expect.stringMatching(/ECONNREFUSED|ENOENT/),
      });
      ch.close();
    });
  }

  it('a peer that sends no handshake within --handshake-timeout aborts the wait, naming the flag', async () => {
    const l = await listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, [], 300);
    const accepted = l.accept();
    const silent = await dial(l.endpoint);
    const err = await accepted.catch((e) => e);
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toMatch(/connected but sent no handshake within 300 ms \(--handshake-timeout\)/);
    await closed(silent);
  });

  it('a peer that sends the stream magic and then a frame of another version aborts with the reason', async () => {
    const l = await listen({ kind: 'tcp', host: '127.0.0.1', port: 0 });
    const accepted = l.accept();
    const s = await dial(l.endpoint);
    s.write(encodeFrame({ ...MIGRATION_FRAME, version: 9 }, Msg.HELLO, 0, hello()));
    await expect(accepted).rejects.toThrow(
      new RegExp(`broke its handshake: .*expected version ${MIGRATION_FRAME.version} at offset 4, got 9`),
    );
  });

  it('a source silent after its handshake is aborted by --peer-timeout', async () => {
    const l = await listenChannel(
      { kind: 'tcp', host: '127.0.0.1', port: 0 },
      { peerTimeoutMs: 300, handshakeTimeoutMs: 5000 },
    );
    cleanups.push(() => l.close());
    const s = await dial(l.endpoint);
    const replies: Buffer[] = [];
    s.on('data', (d) => replies.push(d));
    s.write(encodeFrame(MIGRATION_FRAME, Msg.HELLO, 0, hello(16)));
    const err = await runDestination(
      { peerTimeoutMs: 300, psp: { rate: 0, batch: 16 } },
      await l.accept(),
    ).catch((e) => e);
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toMatch(/the peer sent nothing for 300 ms \(--peer-timeout\)/);
    await closed(s);
    // The destination answered the handshake, then told the source why it gave up.
    const types = [] as number[];
    const all = Buffer.concat(replies);
    for (let o = 0; o + 20 <= all.length; o += 20 + all.readUInt32LE(o + 12))
      types.push(all.readUInt16LE(o + 6));
    expect(types).toEqual([Msg.HELLO_ACK, Msg.ABORT]);
  });
});

describe('unix socket paths', () => {
  it('replaces a stale socket file nobody listens on', async () => {
    const path = join(tempDir(), 'stale.sock');
    // A destination killed with SIGKILL leaves its socket file behind.
    leaveStaleSocket(path);
    expect(statSync(path).isSocket()).toBe(true);
    const l = await listen({ kind: 'unix', path });
    const accepted = l.accept();
    const ch = await connectChannel({ kind: 'unix', path }, 1000);
    await ch.send(Msg.HELLO, hello());
    expect((await (await accepted).next(1000)).type).toBe(Msg.HELLO);
    ch.close();
  });

  it('refuses a socket a live server holds, and leaves that server alone', async () => {
    const path = join(tempDir(), 'live.sock');
    const live = net.createServer((s) => {
      s.on('error', () => {}); // the probe hangs up at once
      s.end('still here');
    });
    await new Promise<void>((r) => live.listen(path, r));
    cleanups.push(() => live.close());
    const err = await listenChannel(
      { kind: 'unix', path },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000 },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(MisuseError);
    expect(err).not.toBeInstanceOf(PeerError);
    expect(err.code).toBe('ERR_SOCKET_IN_USE');
    expect(err.message).toBe(
      `socket ${path} is held by a live server; stop it or choose another --listen path`,
    );
    const s = await dial({ kind: 'unix', path });
    const reply = await new Promise<string>((r) => s.once('data', (d) => r(String(d))));
    expect(reply).toBe('still here');
  });

  it('refuses a path that holds something other than a socket, and one too long to bind', async () => {
    const path = join(tempDir(), 'file');
    writeFileSync(path, 'x');
    await expect(
      listenChannel({ kind: 'unix', path }, { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000 }),
    ).rejects.toThrow(/exists and is not a socket; remove it or choose another --listen path/);
    expect(statSync(path).isFile()).toBe(true);
    const long = `/tmp/${'x'.repeat(120)}.sock`;
    expect(() => parseEndpoint(long, 'unix', '--listen')).toThrow(InvalidArgumentError);
    expect(() => parseEndpoint(long, 'unix', '--listen')).toThrow(/at most 107: choose a shorter path/);
  });
});

describe('local errors are not peer errors', () => {
  it('a tcp address already in use is a local error naming --listen', async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    cleanups.push(() => taken.close());
    const port = (taken.address() as net.AddressInfo).port;
    const err = await listenChannel(
      { kind: 'tcp', host: '127.0.0.1', port },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000 },
    ).catch((e) => e);
    expect(err).not.toBeInstanceOf(PeerError);
    expect(err).toBeInstanceOf(MisuseError);
    expect(err.message).toBe(
      `127.0.0.1:${port} is already in use on this machine; stop what listens there or choose another --listen address`,
    );
  });

  it('a unix socket in a directory that does not exist is a local error', async () => {
    const err = await listenChannel(
      { kind: 'unix', path: join(tempDir(), 'no', 'such', 'd.sock') },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000 },
    ).catch((e) => e);
    expect(err).not.toBeInstanceOf(PeerError);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.message).toMatch(/--listen .*d\.sock: .*(directory must exist|directory does not exist)/);
  });

  it('a destination that is not there is a peer error', async () => {
    const err = await connectChannel({ kind: 'unix', path: join(tempDir(), 'none.sock') }, 1000).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toMatch(/cannot connect to the destination at .*none\.sock/);
  });
});
