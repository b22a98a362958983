/**
 * The destination of a one-process migration, on its own worker thread: it
 * says when it is ready (memory prepared), receives frames through a
 * MessagePort, resumes the guest it verified (it runs until its heartbeat
 * moved), and answers with its verdict.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { portChannel } from './port-channel.js';
import {
  type DestinationWorkerData,
  type DestinationWorkerMessage,
  prepareGuestMemory,
  runDestination,
} from './run-destination.js';
import { MIGRATION_FRAME } from './stream.js';

const data = workerData as DestinationWorkerData;
const channel = portChannel(data.port, MIGRATION_FRAME.version);
// Async, so a guest too large to prepare is a failed verdict like any other.
const receive = async () =>
  runDestination(
    {
      peerTimeoutMs: data.peerTimeoutMs,
      handshakeTimeoutMs: data.handshakeTimeoutMs,
      psp: data.psp,
      log: undefined,
      guestOpsPerMs: data.guestOpsPerMs,
      db: data.db,
      prepared: data.preparedNpages === undefined ? undefined : prepareGuestMemory(data.preparedNpages),
      onReady: () => parentPort!.postMessage({ ready: true } satisfies DestinationWorkerMessage),
    },
    channel,
  );
receive().then(
  (r) => parentPort!.postMessage({ ok: true, ...r } satisfies DestinationWorkerMessage),
  (err: Error) =>
    parentPort!.postMessage({ ok: false, error: err.message } satisfies DestinationWorkerMessage),
);
