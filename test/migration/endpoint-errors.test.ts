/**
 * Where a two-process migration connects (src/migration/endpoints.ts): bad
 * addresses are refused naming the flag and the form expected, a failure of
 * this machine's socket is a local error (never the peer's), and a listener
 * closed before its source came says so.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, MisuseError, PeerError, RuntimeFailure } from '../../src/common/errors.js';
import {
  connectChannel,
  type Endpoint,
  listenChannel,
  listenError,
  parseEndpoint,
} from '../../src/migration/endpoints.js';
import { tempDir } from '../support/tmp.js';

const errno = (code: string): NodeJS.ErrnoException =>
  Object.assign(new Error(`listen ${code}`), { code }) as NodeJS.ErrnoException;

const TCP: Endpoint = { kind: 'tcp', host: '10.0.0.9', port: 80 };
const UNIX: Endpoint = { kind: 'unix', path: '/run/x/d.sock' };

describe('endpoint addresses', () => {
  it('tcp: HOST:PORT, the host defaulting to loopback; anything else is refused naming the flag', () => {
    expect(parseEndpoint('10.1.2.3:7000', 'tcp', '--connect')).toEqual({
      kind: 'tcp',
      host: '10.1.2.3',
      port: 7000,
    });
    expect(parseEndpoint(':7000', 'tcp', '--listen')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 7000 });
    for (const bad of ['10.1.2.3', '10.1.2.3:http', 'host:70000', '']) {
      const e = (() => {
        try {
          parseEndpoint(bad, 'tcp', '--connect');
        } catch (err) {
          return err as InvalidArgumentError;
        }
      })();
      expect(e, bad).toBeInstanceOf(InvalidArgumentError);
      expect(e!.field).toBe('--connect');
      expect(e!.message).toBe(
        `--connect "${bad}" must be HOST:PORT for --transport tcp (e.g. 127.0.0.1:7000)`,
      );
    }
  });

  it('unix: a non-empty path; inproc has no address at all', () => {
    expect(parseEndpoint('/run/d.sock', 'unix', '--listen')).toEqual({ kind: 'unix', path: '/run/d.sock' });
    expect(() => parseEndpoint('', 'unix', '--listen')).toThrow(
      '--listen must be a socket path for --transport unix',
    );
    let e: InvalidArgumentError | undefined;
    try {
      parseEndpoint('127.0.0.1:7000', 'inproc', '--connect');
    } catch (err) {
      e = err as InvalidArgumentError;
    }
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect(e!.field).toBe('--transport');
    expect(e!.message).toBe('--connect needs --transport unix or tcp (inproc runs both ends in one process)');
  });
});

describe("listen failures are this machine's, named with the flag and the fix", () => {
  it('each errno maps to a typed local error, never a PeerError', () => {
    const cases: [NodeJS.ErrnoException, Endpoint, new (...a: never[]) => Error, string][] = [
      [
        errno('EACCES'),
        TCP,
        InvalidArgumentError,
        '--listen 10.0.0.9:80: permission denied; ports below 1024 need privileges, choose another port',
      ],
      [
        errno('EPERM'),
        UNIX,
        InvalidArgumentError,
        '--listen /run/x/d.sock: permission denied; the directory must exist and be writable, choose another path',
      ],
      [
        errno('EADDRNOTAVAIL'),
        TCP,
        InvalidArgumentError,
        '--listen 10.0.0.9:80: 10.0.0.9 is not an address of this machine; use one of its addresses (e.g. 127.0.0.1 or 0.0.0.0)',
      ],
      [
        errno('ENOTDIR'),
        UNIX,
        InvalidArgumentError,
        '--listen /run/x/d.sock: the directory does not exist; create it or choose another path',
      ],
      [errno('EMFILE'), TCP, RuntimeFailure, 'cannot listen on 10.0.0.9:80: listen EMFILE'],
    ];
    for (const [err, e, type, message] of cases) {
      const out = listenError(err, e, '--listen');
      expect(out, err.code).toBeInstanceOf(type);
      expect(out).not.toBeInstanceOf(PeerError);
      expect(out.message).toBe(message);
    }
    expect((listenError(errno('EMFILE'), TCP, '--listen') as RuntimeFailure).code).toBe('ERR_LOCAL_SOCKET');
  });

  it('an address that is not this machine’s: refused as bad input naming --listen', async () => {
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    const err = await listenChannel(
      { kind: 'tcp', host: '192.0.2.1', port: 0 },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000 },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.field).toBe('--listen');
    expect(err.message).toMatch(/^--listen 192\.0\.2\.1:0: 192\.0\.2\.1 is not an address of this machine/);
  });

  it('a unix socket path under a regular file: a typed local error naming the flag', async () => {
    const file = join(tempDir(), 'plain');
    writeFileSync(file, 'not a directory');
    const err = await listenChannel(
      { kind: 'unix', path: join(file, 'd.sock') },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 1000, flag: '--listen' },
    ).catch((e) => e);
    expect(err).toBeInstanceOf(MisuseError);
    expect(err.field).toBe('--listen');
    expect(err.message).toMatch(/^--listen .*plain\/d\.sock: the directory does not exist; create it/);
  });

  it('connecting through a path under a regular file is a local error, not a missing destination', async () => {
    const file = join(tempDir(), 'plain');
    writeFileSync(file, 'not a directory');
    const err = await connectChannel({ kind: 'unix', path: join(file, 'd.sock') }, 1000).catch((e) => e);
    expect(err).toBeInstanceOf(RuntimeFailure);
    expect(err).not.toBeInstanceOf(PeerError);
    expect(err.code).toBe('ERR_LOCAL_SOCKET');
    expect(err.message).toMatch(/^cannot connect to the destination at .*plain\/d\.sock: .*ENOTDIR/);
  });

  it('a listener closed before a source came: accept() rejects with ERR_CLOSED, the socket file is gone', async () => {
    const path = join(tempDir(), 'd.sock');
    const listener = await listenChannel(
      { kind: 'unix', path },
      { peerTimeoutMs: 1000, handshakeTimeoutMs: 0 },
    );
    expect(existsSync(path)).toBe(true);
    const accepted = listener.accept();
    listener.close();
    listener.close(); // a second close is a no-op
    const err = await accepted.catch((e) => e);
    expect(err).toBeInstanceOf(RuntimeFailure);
    expect(err.code).toBe('ERR_CLOSED');
    expect(err.message).toBe('the destination stopped listening before a source connected');
    // Node unlinks the socket file once the server has closed.
    await expect(connectChannel({ kind: 'unix', path }, 1000)).rejects.toBeInstanceOf(PeerError);
  });
});
