import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mapGpaRangeCall } from '../../src/common/kvm-abi.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { runCli } from '../support/cli.js';
import { startServe } from '../support/serve.js';
import { tempDir } from '../support/tmp.js';

describe('sevtrack serve', () => {
  it('drains in-flight batches on SIGTERM, commits them and exits 0', async () => {
    const dir = tempDir();
    const db = join(dir, 'h.db');
    const socket = join(dir, 's.sock');
    const serve = await startServe(db, socket);
    const c = await HostServiceClient.connect(socket);
    await c.registerVm(1, 4096);
    const call = (gfn: number) => mapGpaRangeCall(gfn, 1, false);
    const pending = Array.from({ length: 20 }, (_, i) => c.hypercallBatch(1, [call(i * 2), call(i * 2 + 1)]));
    await pending[0];
    serve.child.kill('SIGTERM');
    const results = await Promise.allSettled(pending);
    const acked = results.filter((r) => r.status === 'fulfilled').length;
    expect((await serve.exited).code).toBe(0);
    expect(serve.stderr()).toMatch(/listening on .*s\.sock[\s\S]*stopped/);
    const store = CbitStore.open(db);
    expect(store.info(1).lastSeq).toBeGreaterThanOrEqual(acked * 2);
    expect(store.info(1).lastSeq % 2).toBe(0); // batches are all-or-nothing
    store.close();
  });

  it('exits 2 for a database that is not ours and for a bad --synchronous', async () => {
    const dir = tempDir();
    const junk = join(dir, 'junk');
    writeFileSync(junk, 'not sqlite at all, not even close, definitely not a database header');
    const r = await runCli(['serve', '--db', junk, '--socket', join(dir, 's')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/not an SQLite database/);
    const s = await runCli([
      'serve',
      '--db',
      join(dir, 'x.db'),
      '--socket',
      join(dir, 's'),
      '--synchronous',
      'off',
    ]);
    expect(s.code).toBe(2);
    expect(s.stderr).toMatch(/--synchronous "off" must be full or normal/);
  });
});
