/**
 * The destination of a one-process migration, on its own worker thread: it
 * says when it is ready (memory prepared; listening, for a socket link),
 * receives frames through a MessagePort or from the one source that
 * connects to its socket, resumes the guest it verified (it runs until its
 * heartbeat moved), and answers with its verdict.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MisuseError, SevtrackError } from '../common/errors.js';
import type { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { FrameChannel } from './channel.js';
import { DestinationTracker } from './destination-tracker.js';
import { type Endpoint, type Listener, listenChannel } from './endpoints.js';
import { portChannel } from './port-channel.js';
import {
  type DestinationWorkerData,
  type DestinationWorkerMessage,
  prepareGuestMemory,
  runDestination,
} from './run-destination.js';
import { MIGRATION_FRAME } from './stream.js';

const data = workerData as DestinationWorkerData;
const ready = (endpoint?: Endpoint) =>
  parentPort!.postMessage({ ready: true, endpoint } satisfies DestinationWorkerMessage);
// A port is wrapped at once, so nothing the source sends can miss the channel.
const port = 'port' in data.link ? portChannel(data.link.port, MIGRATION_FRAME.version) : undefined;

/**
 * 'stop' from the parent: the run is over (the source finished or gave up).
 * What is still open is closed, so a destination waiting for its source, or
 * for the rest of a stream the source abandoned, ends through its error path
 * (which closes its tracker and removes the tracker's temporary database)
 * and posts its verdict; the parent then ends the thread.
 */
/** Aborted by 'stop': a guest still being prepared stops between two steps, a listener not yet used is closed. */
const stopped = new AbortController();
let listener: Listener | undefined;
let channel: FrameChannel | undefined = port;
parentPort!.on('message', (m: unknown) => {
  if (m !== 'stop') return;
  stopped.abort(new Error('the run ended before the source connected'));
  listener?.close();
  channel?.close();
});
parentPort!.unref(); // waiting for 'stop' must not keep a finished thread alive

const run = (
  channel: FrameChannel,
  prepared: GuestMemory | undefined,
  onReady?: () => void,
  tracker?: DestinationTracker,
) =>
  runDestination(
    {
      peerTimeoutMs: data.peerTimeoutMs,
      handshakeTimeoutMs: data.handshakeTimeoutMs,
      psp: data.psp,
      log: undefined,
      guestOpsPerMs: data.guestOpsPerMs,
      db: data.db,
      tracker,
      prepared,
      onReady,
    },
    channel,
  );

// Async, so a guest too large to prepare is a failed verdict like any other.
const receive = async () => {
  const prepared =
    data.preparedNpages === undefined
      ? undefined
      : await prepareGuestMemory(data.preparedNpages, stopped.signal);
  if (port) return run(port, prepared, () => ready());
  if (!('listen' in data.link)) throw new Error('destination worker: no link to the source');
  const at = data.link.listen;
  // The tracker opens before listening: a --db it cannot use is refused
  // now, so the source is told why instead of finding its connection closed.
  return DestinationTracker.whileListening(data.db, async (handOver) => {
    try {
      // No handshake timeout: our own source connects once it has booted its
      // guest, and says HELLO at once; the address is private to this run.
      listener = await listenChannel(at, {
        peerTimeoutMs: data.peerTimeoutMs,
        handshakeTimeoutMs: 0,
      });
      stopped.signal.throwIfAborted();
      ready(listener.endpoint);
      channel = await listener.accept();
      return await run(channel, prepared, undefined, handOver());
    } finally {
      listener?.close();
    }
  });
};
receive().then(
  (r) => parentPort!.postMessage({ ok: true, ...r } satisfies DestinationWorkerMessage),
  (err: Error) =>
    parentPort!.postMessage({
      ok: false,
      error: err.message,
      code: err instanceof SevtrackError ? err.code : undefined,
      misuse: err instanceof MisuseError,
    } satisfies DestinationWorkerMessage),
);
