/**
 * The main job: a whole migration of a guest (simulated, or a real VM with
 * `backend: 'kvm'`), source and destination in one process (the default,
 * over an in-memory channel, a unix socket or tcp on loopback) or one side
 * of a two-process migration.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import { rejectionWithin, sleepUnlessAborted, untilAborted } from '../common/bounded-wait.js';
import { InvalidArgumentError, InvariantError, MisuseError, PeerError } from '../common/errors.js';
import { MAX_UNIX_PATH_BYTES } from '../common/unix-socket.js';
import { startWorker } from '../common/worker-script.js';
import type { WorkloadName } from '../guest/workloads.js';
import { CbitStore } from '../host/cbit-store.js';
import type { BackendName, SourceGuest } from '../vmm/backend.js';
import type { HypercallBackend } from '../vmm/hypercall-backend.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import { DEFAULT_READ_COST_NS_PER_PAGE } from '../vmm/sim/read-cost.js';
import { ThreadedGuest } from '../vmm/sim/threaded-guest.js';
import { VcpuPool } from '../vmm/sim/vcpu-pool.js';
import { type FrameChannel, memoryChannelPair } from './channel.js';
import type { OnNoConvergence } from './convergence.js';
import { type DestinationResult, MigrationDestination } from './destination.js';
import type { DestinationTracker } from './destination-tracker.js';
import { connectChannel, type Endpoint, listenChannel, type Transport } from './endpoints.js';
import { guestPagesFor } from './guest-size.js';
import { bootKvmSource } from './kvm-guests.js';
import { MigrationLog } from './migration-log.js';
import { portChannel } from './port-channel.js';
import type { PspLimits } from './psp.js';
import {
  type DestinationOutcome,
  type DestinationWorkerData,
  type DestinationWorkerMessage,
  prepareGuestMemory,
  runDestination,
} from './run-destination.js';
import { MigrationSource, type MigrationSummary, type RoundProgress } from './source.js';
import { MIGRATION_FRAME, type Protocol, type VerifyMode } from './stream.js';
import type { Tracker } from './tracker.js';
import { inProcessHost, type ServiceTarget, type SourceHost, serviceHost } from './tracker-host.js';

export interface MigrateParams {
  /** The guest backend: sim (default) or kvm (a real VM on /dev/kvm, docs/kvm.md). */
  backend: BackendName;
  memoryBytes: number;
  vcpus: number;
  workload: WorkloadName;
  protocol: Protocol;
  verify: VerifyMode;
  seed: number;
  transport: Transport;
  maxDowntimeMs: number;
  maxRounds: number;
  /** When --max-downtime cannot be met within --max-rounds: abort (default) or pause anyway. */
  onNoConvergence: OnNoConvergence;
  psp: PspLimits;
  forceUnsafe: boolean;
  peerTimeoutMs: number;
  /** How long the destination waits for the source's handshake (HELLO) on a connection. */
  handshakeTimeoutMs: number;
  /** Guest page operations per ms per vCPU (the guest's load; 0 = unpaced). */
  guestOpsPerMs: number;
  /** How long the guest runs before the migration starts. */
  warmupMs: number;
  batchPages: number;
  /** Modelled cost of each dirty-log and c-bit-state read, ns per guest page (src/vmm/sim/read-cost.ts). */
  readCostNsPerPage: number;
  /** Whether the guest starts with every page private (SEV guests do); false starts all shared. */
  guestEncrypted?: boolean;
  log?: string;
  /** `--service SOCKET --vm ID`: the guest reports to, and the source syncs from, a running `sevtrack serve`. */
  service?: ServiceTarget;
  /** The destination as the service's migration record names it (its address). */
  destination?: string;
  /** Migrations of the one running guest, one after the other (A → B → C …). */
  hops: number;
  /** The (last) destination's tracker database; default a temporary one. */
  db?: string;
  /** Tracked sysgenid watchers in the guest, how many never acknowledge, and how long the overseer waits. */
  watchers: number;
  stuckWatchers: number;
  watcherTimeoutMs: number;
  onRound?: (p: RoundProgress) => void;
  onPages?: (round: number, sent: number, total: number) => void;
  /** Cancels the source's migration when aborted (SourceOptions.signal). */
  signal?: AbortSignal;
}

export const DEFAULT_PARAMS: MigrateParams = {
  backend: 'sim',
  memoryBytes: 256 * 2 ** 20,
  vcpus: 2,
  workload: 'mixed',
  protocol: 'safe',
  verify: 'strict',
  seed: 1,
  transport: 'inproc',
  maxDowntimeMs: 300,
  maxRounds: 30,
  onNoConvergence: 'abort',
  psp: { rate: 0, batch: 4096 },
  forceUnsafe: false,
  peerTimeoutMs: 30_000,
  handshakeTimeoutMs: 10_000,
  guestOpsPerMs: 32,
  warmupMs: 300,
  batchPages: 256,
  readCostNsPerPage: DEFAULT_READ_COST_NS_PER_PAGE,
  hops: 1,
  watchers: 0,
  stuckWatchers: 0,
  watcherTimeoutMs: 5000,
};

/** The guest's page count; throws (naming the limit) unless `guests` guests of this size fit in this process. */
export function guestPages(p: MigrateParams, guests = 1): number {
  return guestPagesFor(p.memoryBytes, { guests });
}

/** The source side: a running guest, its host store, and the migration of it over `channel`. */
/**
 * `connect`: the channel, or a function that opens it. A function is called
 * once the guest runs, when the migration starts (as a VMM connects when told
 * to migrate), so a destination's --handshake-timeout never covers the
 * simulated guest's boot.
 */
export async function runSource(
  p: MigrateParams,
  connect: FrameChannel | (() => Promise<FrameChannel>),
): Promise<MigrationSummary> {
  let channel = typeof connect === 'function' ? undefined : connect;
  let npages: number;
  let log: MigrationLog | undefined;
  try {
    npages = guestPages(p);
    log = p.log
      ? MigrationLog.create(p.log, {
          role: 'source',
          npages,
          vcpus: p.vcpus,
          protocol: p.protocol,
          verify: p.verify,
          params: { ...p, onRound: undefined, onPages: undefined, signal: undefined },
        })
      : undefined;
  } catch (err) {
    channel?.close(); // the peer learns at once that no migration is coming
    throw err;
  }
  const encrypted = p.guestEncrypted ?? true;
  let host: SourceHost | undefined;
  let started: StartedGuest | undefined;
  try {
    p.signal?.throwIfAborted(); // cancelled already: boot nothing
    host = p.service ? await serviceHost(p.service, npages, encrypted) : inProcessHost(npages, encrypted);
    started = await startGuest(p, npages, host);
    channel ??= await (connect as () => Promise<FrameChannel>)();
    const guest = started.guest;
    await host.begin(p.destination ?? 'a migration destination');
    const summary = await new MigrationSource(
      sourceOptions(p, guest, host.tracker, host.vm, channel, log),
    ).run();
    await host.ended(summary);
    const service = host.record();
    if (service) summary.service = service;
    log?.close({ ...summary });
    return summary;
  } catch (err) {
    // A lost service is named as the cause, with the source guest's state.
    const reported = (host?.explain(err, started?.running() ?? false) ?? err) as Error;
    await host?.aborted(reported);
    // Failed or cancelled before the migration started (while the guest
    // booted, say): the log says so with its abort, as a log must begin.
    if (log?.empty) log.abort(0, reported.message);
    log?.close({ aborted: reported.message });
    throw reported;
  } finally {
    await started?.stop();
    channel?.close();
    await host?.close();
  }
}

/** A source guest booted for runSource: its vCPUs run until stop(). */
interface StartedGuest {
  guest: SourceGuest;
  /** Whether its vCPUs run (not paused). */
  running(): boolean;
  stop(): Promise<void>;
}

/**
 * Boots the source guest of p.backend, its exits going to `host`, warmed up
 * for p.warmupMs. A kvm guest's exits go straight into an in-process
 * CbitStore (TrackerLink); a host service is sim-only.
 */
async function startGuest(p: MigrateParams, npages: number, host: SourceHost): Promise<StartedGuest> {
  if (p.backend === 'kvm') {
    if (!(host.tracker instanceof CbitStore))
      throw new InvalidArgumentError(
        '--service',
        '--service tracks sim guests; a kvm guest reports to an in-process tracker',
      );
    const booted = await bootKvmSource(p, npages, host.tracker, host.vm);
    return { guest: booted.guest, running: () => !booted.guest.paused, stop: booted.stop };
  }
  const memory = await launchMemory(npages, p.guestEncrypted ?? true, p.signal);
  const pool = await startVcpus(p, memory, host);
  return {
    guest: new ThreadedGuest(memory, pool),
    running: () => !pool.paused,
    stop: async () => {
      await pool.stop();
    },
  };
}

/**
 * A sim guest's memory at launch: huge pages, and resident before the guest
 * runs, as an SEV VMM's is (KVM pins an SEV guest's memory when the VMM
 * registers it), so the migration source never takes a first-touch fault on
 * a page the guest has not written. Cancelled (`signal`) within a step.
 */
async function launchMemory(npages: number, encrypted: boolean, signal?: AbortSignal): Promise<GuestMemory> {
  const memory = GuestMemory.create(npages, { encrypted, hugePages: true });
  await memory.makeResident(signal);
  return memory;
}

/**
 * Starts the guest's vCPUs over `memory`, their exits going to `host`, and
 * resolves once setup is done and the guest ran for p.warmupMs. A failure
 * before that stops the vCPUs, so the caller has nothing to clean up; a
 * cancel (p.signal) ends the wait at once and abandons the guest (its vCPUs
 * are terminated: a 4 GiB guest's setup runs for seconds before its vCPUs
 * reach a point where they could stop).
 */
async function startVcpus(
  p: MigrateParams,
  memory: GuestMemory,
  host: { backend: HypercallBackend; vm: number },
): Promise<VcpuPool> {
  const pool = VcpuPool.start({
    memory,
    backend: host.backend,
    vm: host.vm,
    vcpus: p.vcpus,
    workload: p.workload,
    seed: p.seed,
    opsPerMs: p.guestOpsPerMs,
  });
  try {
    await pool.waitSetup(p.signal);
    await sleepUnlessAborted(p.warmupMs, p.signal);
    return pool;
  } catch (err) {
    await pool.stop({ now: p.signal?.aborted }).catch(() => {});
    throw err;
  }
}

/** A guest booted on this side, its host tracker in a temporary database. */
export interface BootedGuest {
  guest: ThreadedGuest;
  store: Tracker;
  vm: number;
  stop(): Promise<void>;
}

/** Boots a simulated guest in this process (setup done, warmed up for p.warmupMs), its tracker a temporary CbitStore. */
export async function bootGuest(p: MigrateParams, npages: number): Promise<BootedGuest> {
  const encrypted = p.guestEncrypted ?? true;
  const host = inProcessHost(npages, encrypted);
  let pool: VcpuPool | undefined;
  const stop = async () => {
    await pool?.stop();
    await host.close();
  };
  try {
    const memory = await launchMemory(npages, encrypted, p.signal);
    pool = await startVcpus(p, memory, host);
    return { guest: new ThreadedGuest(memory, pool), store: host.tracker, vm: host.vm, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Options of a source built around an existing guest. */
export function sourceOptions(
  p: MigrateParams,
  guest: SourceGuest,
  store: Tracker,
  vm: number,
  channel: FrameChannel,
  log?: MigrationLog,
) {
  return {
    guest,
    store,
    vm,
    channel,
    protocol: p.protocol,
    verify: p.verify,
    psp: p.psp,
    maxDowntimeMs: p.maxDowntimeMs,
    maxRounds: p.maxRounds,
    onNoConvergence: p.onNoConvergence,
    forceUnsafe: p.forceUnsafe,
    batchPages: p.batchPages,
    peerTimeoutMs: p.peerTimeoutMs,
    readCostNsPerPage: p.readCostNsPerPage,
    log,
    onRound: p.onRound,
    onPages: p.onPages,
    signal: p.signal,
  };
}

/**
 * Migrates an existing guest (threaded or scripted) whose host state lives in
 * `store`, to a destination in this process over an in-memory channel.
 */
export async function migrateGuest(
  p: MigrateParams,
  guest: SourceGuest,
  store: CbitStore,
  vm: number,
  options: { allocate?: (npages: number) => GuestMemory; tracker?: DestinationTracker } = {},
): Promise<{ summary: MigrationSummary; destination: DestinationResult<GuestMemory> }> {
  const [a, b] = memoryChannelPair(MIGRATION_FRAME);
  const dest = new MigrationDestination<GuestMemory>({
    channel: b,
    peerTimeoutMs: p.peerTimeoutMs,
    handshakeTimeoutMs: p.handshakeTimeoutMs,
    psp: p.psp,
    allocate: options.allocate,
    tracker: options.tracker,
  });
  const destination = dest.run();
  destination.catch(() => {});
  try {
    const summary = await new MigrationSource(sourceOptions(p, guest, store, vm, a)).run();
    return { summary, destination: await destination };
  } finally {
    a.close();
  }
}

/**
 * Where a one-process socket run's destination listens: tcp on loopback (any
 * port), or a unix socket in a fresh directory under os.tmpdir() (`dir`, for
 * the caller to remove). Refuses (exit 2, naming TMPDIR) a temp directory so
 * deep that the socket path would not fit a unix socket address, before
 * anything starts.
 */
function localEndpoint(transport: 'unix' | 'tcp'): { endpoint: Endpoint; dir?: string } {
  if (transport === 'tcp') return { endpoint: { kind: 'tcp', host: '127.0.0.1', port: 0 } };
  const prefix = join(tmpdir(), 'sevtrack-mig-');
  const longest = join(`${prefix}XXXXXX`, 'm.sock'); // mkdtemp adds 6 characters
  if (Buffer.byteLength(longest) > MAX_UNIX_PATH_BYTES) {
    throw new InvalidArgumentError(
      'TMPDIR',
      `a one-process unix migration's socket would be ${longest} (${Buffer.byteLength(longest)} bytes); a unix socket path has at most ${MAX_UNIX_PATH_BYTES}: set TMPDIR to a shorter directory, or use --transport tcp or inproc`,
    );
  }
  const dir = mkdtempSync(prefix);
  return { endpoint: { kind: 'unix', path: join(dir, 'm.sock') }, dir };
}

/** How long stopping waits for a destination thread to end on its own before terminating it. */
const STOP_GRACE_MS = 5000;

/**
 * Runs the destination on a worker thread (its own core), reached through a
 * MessagePort or, given `listen`, through a socket it listens on.
 */
function destinationOnWorker(
  p: MigrateParams,
  listen?: Endpoint,
): {
  /** The channel to the destination, once it can take the HELLO (its memory prepared, its socket listening). */
  connect: () => Promise<FrameChannel>;
  verdict: Promise<DestinationOutcome>;
  stop: () => Promise<number>;
} {
  const ports = listen ? undefined : new MessageChannel();
  const workerData: DestinationWorkerData = {
    link: ports ? { port: ports.port2 } : { listen: listen! },
    peerTimeoutMs: p.peerTimeoutMs,
    // The source is this process: it says HELLO after booting its guest, or closes the channel.
    handshakeTimeoutMs: 0,
    psp: p.psp,
    guestOpsPerMs: p.guestOpsPerMs,
    db: p.db,
    // The size is known: the destination prepares its memory while the source boots.
    preparedNpages: guestPages(p),
  };
  const worker = startWorker(import.meta.url, './destination-worker.js', {
    workerData,
    transferList: ports ? [ports.port2] : [],
  });
  let readyNow!: (endpoint?: Endpoint) => void;
  const ready = new Promise<Endpoint | undefined>((r) => {
    readyNow = r;
  });
  const verdict = new Promise<DestinationOutcome>((resolve, reject) => {
    worker.on('message', (r: DestinationWorkerMessage) => {
      if (r.ready) return readyNow(r.endpoint);
      if (r.ok) resolve(r as DestinationOutcome);
      else {
        const message = r.error ?? 'the destination failed';
        // A misuse (a --db that already holds the VM, say) stays one: exit 2, its code kept.
        reject(
          r.misuse ? new MisuseError(r.code ?? 'ERR_INVALID_ARGUMENT', message) : new PeerError(message),
        );
      }
    });
    worker.once('error', (e) =>
      reject(new PeerError(`the destination thread failed: ${e.message}`, { cause: e })),
    );
    worker.once('exit', () => reject(new PeerError('the destination thread exited')));
  });
  // A destination that failed before the source connects (before it was
  // ready, e.g. a --db that already holds the VM, or while the source
  // booted): the source is told its error at once. Over a port it used to
  // send its HELLO to a thread that would never answer, and waited out
  // --peer-timeout (30 s) for a misleading "the peer sent nothing".
  let failedEarly: Error | undefined;
  verdict.catch((e: Error) => {
    failedEarly ??= e;
    readyNow();
  });
  const channel = ports && portChannel(ports.port1, MIGRATION_FRAME.version);
  return {
    connect: async () => {
      // A cancel while the destination still prepares its memory ends the wait.
      const endpoint = await untilAborted(ready, p.signal);
      // Failed before it was ready (it opens its tracker first): nothing
      // would answer the HELLO, so its own error is the source's.
      if (failedEarly) throw failedEarly;
      if (channel) return channel;
      // A listening worker says where (a failed one set failedEarly first).
      if (!endpoint) throw new InvariantError('the destination thread was ready without an address');
      return connectChannel(endpoint, p.peerTimeoutMs).catch(async (err: Error) => {
        // A destination that failed after it listened (its listener gone):
        // its own error says why, not the refused connection.
        throw (await rejectionWithin(verdict, 1000)) ?? err;
      });
    },
    verdict,
    stop: async () => {
      // The thread is asked to end first and given a moment: a destination
      // still taking frames the source sent before it gave up (a unix run
      // cancelled in its bulk round) would otherwise be cut off before its
      // error path removed its tracker's temporary database (left behind in
      // 2 of 12 cancelled CLI runs).
      worker.postMessage('stop');
      await rejectionWithin(verdict, STOP_GRACE_MS);
      return worker.terminate();
    },
  };
}

/**
 * Both sides in this process, over the chosen transport: `inproc` puts the
 * destination on its own worker thread (MessagePort); `unix` and `tcp` go
 * through a real socket on this machine.
 */
export async function migrateLocally(
  p: MigrateParams,
): Promise<{ summary: MigrationSummary; destination: DestinationOutcome }> {
  guestPages(p, 2); // both guests live in this process: refuse a size it cannot hold before starting
  let srcChannel: FrameChannel | (() => Promise<FrameChannel>);
  let destination: Promise<DestinationOutcome>;
  let closeListener: () => unknown = () => {};
  if (p.transport === 'inproc' && p.backend === 'kvm') {
    // A VM's vCPUs are native threads: its destination runs in this thread,
    // over an in-memory channel (the addon's VMs live in the main thread).
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    srcChannel = a;
    // The cancel is the source's (p.signal): it tells this destination, and
    // past its digests lets the migration finish; the destination has none of its own.
    destination = runDestination({ ...p, log: undefined, handshakeTimeoutMs: 0, signal: undefined }, b);
  } else if (p.transport === 'inproc' || (p.backend === 'sim' && !p.watchers)) {
    // The destination on its own thread (and core), reached through a
    // MessagePort (inproc) or a real socket it listens on (unix, tcp).
    const { endpoint: listen, dir } = p.transport === 'inproc' ? {} : localEndpoint(p.transport);
    let d: ReturnType<typeof destinationOnWorker>;
    try {
      d = destinationOnWorker(p, listen);
    } catch (err) {
      if (dir) rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    // The source boots its guest meanwhile and connects once the destination
    // is ready: preparing its memory is starting the incoming VM, not migrating.
    srcChannel = d.connect;
    destination = d.verdict;
    // Whatever happened, the destination thread ends with the run.
    closeListener = async () => {
      await d.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    };
  } else {
    // A kvm guest's destination VM lives in this thread (the addon's VMs
    // are the main thread's), and so does its end of the socket; so does a
    // sim destination with sysgenid watchers (the worker does not run them).
    // Its memory is prepared before it listens (starting the incoming VM,
    // not migrating: outside the source's time).
    const prepared = p.backend === 'sim' ? await prepareGuestMemory(guestPages(p), p.signal) : undefined;
    const { endpoint: ep, dir } = localEndpoint(p.transport);
    const removeDir = () => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    };
    // No handshake timeout: our own source connects at once and says HELLO
    // after booting its guest; a stray on this private address cannot block it.
    const listener = await listenChannel(ep, { peerTimeoutMs: p.peerTimeoutMs, handshakeTimeoutMs: 0 }).catch(
      (err: Error) => {
        removeDir();
        throw err;
      },
    );
    closeListener = () => {
      listener.close();
      removeDir();
    };
    // One log per migration: the source's (a two-process destination keeps its own).
    destination = listener
      .accept()
      .then((ch) => runDestination({ ...p, log: undefined, prepared, signal: undefined }, ch));
    srcChannel = await connectChannel(listener.endpoint, p.peerTimeoutMs);
  }
  destination.catch(() => {});
  try {
    const where =
      p.transport !== 'inproc'
        ? `${p.transport} socket in this process (destination on ${p.backend === 'kvm' ? 'this' : 'a worker'} thread)`
        : p.backend === 'kvm'
          ? 'in-process destination (this thread)'
          : 'in-process destination (worker thread)';
    const summary = await runSource({ ...p, destination: p.destination ?? where }, srcChannel);
    return { summary, destination: await destination };
  } catch (err) {
    // The source saw only its peer go. A destination that refused its input
    // (a --db that already holds the VM: a kvm destination on this thread
    // closes the channel) says why: that error, a misuse, is the run's.
    if (err instanceof PeerError) {
      const own = await rejectionWithin(destination, 1000);
      if (own instanceof MisuseError) throw own;
    }
    throw err;
  } finally {
    await closeListener();
  }
}
