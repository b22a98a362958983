/**
 * The destination of a one-process migration, on its own worker thread: it
 * receives frames through a MessagePort and answers with its verdict (the
 * guest it built stays in this thread and is dropped with it).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { portChannel } from './port-channel.js';
import {
  type DestinationWorkerData,
  type DestinationWorkerResult,
  runDestination,
  verdictOf,
} from './run-destination.js';
import { MIGRATION_FRAME } from './stream.js';

const data = workerData as DestinationWorkerData;
const channel = portChannel(data.port, MIGRATION_FRAME.version);
runDestination(
  {
    peerTimeoutMs: data.peerTimeoutMs,
    handshakeTimeoutMs: data.handshakeTimeoutMs,
    psp: data.psp,
    log: undefined,
  },
  channel,
).then(
  (r) => parentPort!.postMessage({ ok: true, ...verdictOf(r) } satisfies DestinationWorkerResult),
  (err: Error) =>
    parentPort!.postMessage({ ok: false, error: err.message } satisfies DestinationWorkerResult),
);
