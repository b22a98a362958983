/**
 * A worker terminated while it is inside a native call must not take the
 * process down. The call's JS results (an object, an error) cannot be made
 * in an isolate that is terminating; node-addon-api turns that into a C++
 * exception that, uncaught, aborted the process (std::terminate, exit 134)
 * until the addon was built with NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS.
 * The engine terminates workers (vCPUs after a failure, a destination that
 * did not stop within its grace) wherever they are.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ADDON = fileURLToPath(new URL('../../build/Release/sevtrack_native.node', import.meta.url));

/** Runs in a child process: an abort there is an exit code here, not the end of the test run. */
const CHILD = `
const { Worker } = require('node:worker_threads');
const WORKER = \`
const { parentPort } = require('node:worker_threads');
const addon = require(${JSON.stringify(ADDON)});
const page = new Uint8Array(new SharedArrayBuffer(4096));
parentPort.postMessage('in');
for (;;) addon.prefaultMemory(page); // returns a new object each call
\`;
(async () => {
  for (let i = 0; i < 40; i++) {
    const w = new Worker(WORKER, { eval: true });
    await new Promise((r) => w.once('message', r));
    await new Promise((r) => setTimeout(r, i % 5));
    await w.terminate();
  }
  process.stdout.write('all terminated');
})();
`;

describe('native addon under worker.terminate()', () => {
  it('a worker terminated mid-call ends alone; the process lives on', () => {
    const r = spawnSync(process.execPath, ['-e', CHILD], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).not.toMatch(/terminate called/);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('all terminated');
  });
});
