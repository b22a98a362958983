/**
 * Worker-thread host of simulated guest watchers (watchers.ts starts it).
 * Messages to the parent: { type: 'ready' } once every watcher is tracked,
 * { type: 'event', event } per generation handled, { type: 'error', message },
 * { type: 'stopped' } after a { type: 'stop' } from the parent.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SimulatedWatcher, startInBatches, type WatcherSpec } from './simulated-watcher.js';

interface WorkerInput {
  socketPath: string;
  specs: WatcherSpec[];
  poolBytes: number;
}

const input = workerData as WorkerInput;
const port = parentPort!;
const onError = (err: Error) => port.postMessage({ type: 'error', message: err.message });

try {
  const watchers = await startInBatches(input.specs, (spec) =>
    SimulatedWatcher.start(input.socketPath, spec, {
      poolBytes: input.poolBytes,
      onEvent: (event) => port.postMessage({ type: 'event', event }),
      onError,
    }),
  );
  port.on('message', async (msg: { type: string }) => {
    if (msg.type !== 'stop') return;
    await Promise.all(watchers.map((w) => w.stop()));
    port.postMessage({ type: 'stopped' });
    port.close();
  });
  port.postMessage({ type: 'ready' });
} catch (err) {
  onError(err as Error);
}
