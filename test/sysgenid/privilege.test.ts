/**
 * Bumping is privileged (docs/sysgenid.md, "Privilege"): the service reads
 * the peer's credentials with SO_PEERCRED and refuses a bump (EACCES) unless
 * the peer is root or an --allow-uid. Run as root, the refused client is a
 * real process running as uid 65534 (setpriv); run as another user, the test
 * process itself is the unprivileged peer.
 */
import { chmodSync, statSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { SysgenidClient } from '../../src/sysgenid/client.js';
import { errnoOf } from '../../src/sysgenid/errors.js';
import { startCli } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';
import { type SysgenidServe, startSysgenidServe } from './serve-process.js';

const isRoot = process.getuid?.() === 0;
/** Why the refusal tests need root: the refused peer is another uid, which only root can become (setpriv). */
const needsRoot = isRoot ? undefined : 'not root: the refused peer runs as uid 65534 through setpriv';
if (needsRoot) console.warn(`sysgenid privilege tests skipped: ${needsRoot}`);
const NOBODY = 65534;
const AS_NOBODY = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups'];

let serve: SysgenidServe | undefined;

afterEach(async () => {
  await serve?.stop();
  serve = undefined;
});

/** A service whose socket the unprivileged uid can reach (group 65534, directory traversable). */
async function startShared(extra: string[] = []): Promise<SysgenidServe> {
  const dir = tempDir('sysgenid-priv-');
  chmodSync(dir, 0o711);
  serve = await startSysgenidServe(dir, ['--group', String(NOBODY), ...extra]);
  return serve;
}

async function runAsNobody(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const cli = startCli(args, AS_NOBODY);
  const code = await cli.exit;
  return { code, out: cli.out(), err: cli.err() };
}

describe('sysgenid privilege', () => {
  it.skipIf(needsRoot)(
    'refuses a bump from an unprivileged process with EACCES and changes nothing',
    async () => {
      const s = await startShared();
      expect(statSync(s.socket).mode & 0o777).toBe(0o660);
      expect(statSync(s.socket).gid).toBe(NOBODY);
      const observer = await SysgenidClient.connect(s.socket);
      await observer.setTracking(true);
      try {
        // The unprivileged process may read...
        const get = await runAsNobody(['sysgenid', 'get', '--socket', s.socket, '--json']);
        expect(get.code, get.err).toBe(0);
        expect(JSON.parse(get.out)).toEqual({ generation: 0 });
        // ...but not bump.
        const bump = await runAsNobody(['sysgenid', 'bump', '--socket', s.socket]);
        expect(bump.code).toBe(2);
        expect(bump.err).toMatch(/uid 65534.*--allow-uid 65534.*ERR_SYSGENID_EACCES/);
        expect(await observer.get()).toBe(0);
        expect(await observer.outdated()).toBe(0);
        expect(await observer.readable()).toBe(false);
      } finally {
        await observer.close();
      }
    },
  );

  it.skipIf(needsRoot)('lets an --allow-uid bump', async () => {
    const s = await startShared(['--allow-uid', String(NOBODY)]);
    const bump = await runAsNobody(['sysgenid', 'bump', '--socket', s.socket, '--min', '5', '--json']);
    expect(bump.code, bump.err).toBe(0);
    expect(JSON.parse(bump.out)).toEqual({ generation: 5, madeOutdated: 0 });
  });

  it.skipIf(isRoot)('refuses this unprivileged process unless its uid is allowed', async () => {
    const uid = process.getuid?.() ?? 0;
    serve = await startSysgenidServe(tempDir('sysgenid-priv-'));
    const c = await SysgenidClient.connect(serve.socket);
    try {
      await expect(c.bump()).rejects.toSatisfy((e) => errnoOf(e) === 'EACCES');
      expect(await c.get()).toBe(0);
    } finally {
      await c.close();
    }
    await serve.stop();
    serve = await startSysgenidServe(tempDir('sysgenid-priv-'), ['--allow-uid', String(uid)]);
    const allowed = await SysgenidClient.connect(serve.socket);
    try {
      expect((await allowed.bump()).generation).toBe(1);
    } finally {
      await allowed.close();
    }
  });
});
