/**
 * The destination side of a migration over a frame channel: it allocates the
 * guest the source announces, receives, verifies and resumes it, its own
 * tracker (a SQLite database, `--db`, else a temporary one) holding the VM;
 * the resumed guest runs on (destination-resume.ts). Used by a two-process
 * destination, by the one-process run's destination thread
 * (destination-worker.ts), over local sockets, and by chains. The backend
 * (`sim` by default, or `kvm`: a VM created with boot: false, kvm-guests.ts)
 * decides what guest it allocates; a source of another backend is refused.
 */
import type { MessagePort } from 'node:worker_threads';
import { GuestMismatchError } from '../common/errors.js';
import { PAGE_SIZE } from '../common/ranges.js';
import { formatBytes } from '../common/units.js';
import { GuestSysgenid } from '../sysgenid/guest-sysgenid.js';
import type { BackendName, MigratableMemory } from '../vmm/backend.js';
import type { KvmSourceGuest } from '../vmm/kvm/source-guest.js';
import { GuestMemory } from '../vmm/sim/guest-memory.js';
import type { ThreadedGuest } from '../vmm/sim/threaded-guest.js';
import type { FrameChannel } from './channel.js';
import { type DestinationResult, MigrationDestination } from './destination.js';
import { type ResumeReport, type RunningGuest, resumeGuest } from './destination-resume.js';
import { DestinationTracker } from './destination-tracker.js';
import type { Endpoint } from './endpoints.js';
import { guestPagesFor } from './guest-size.js';
import { allocateKvmGuest } from './kvm-guests.js';
import { MigrationLog } from './migration-log.js';
import type { PspLimits } from './psp.js';

/** The running guest a destination of backend B resumes. */
export type GuestOf<B extends BackendName> = B extends 'kvm' ? KvmSourceGuest : ThreadedGuest;

export interface DestinationParams<B extends BackendName = 'sim'> {
  /** The guest backend this destination receives into (default sim). */
  backend?: B;
  peerTimeoutMs: number;
  handshakeTimeoutMs?: number;
  psp: PspLimits;
  log?: string;
  /** The destination tracker's database (default: a temporary one, removed at the end). */
  db?: string;
  /**
   * The tracker, already opened (of `db`) by a caller that listens: a --db
   * it cannot use is refused before any source connects, rather than
   * closing on a source that did. The run takes it over (closes it).
   */
  tracker?: DestinationTracker;
  /**
   * The sim guest's memory, of the size this destination was started for
   * (`--memory`), allocated and faulted in by the caller before a source can
   * connect (prepareGuestMemory), as a VMM preallocates guest RAM: a source
   * of another size is refused naming --memory. Undefined: allocated at the
   * HELLO, of the source's size.
   */
  prepared?: GuestMemory;
  /** The resumed guest's load (page operations per ms per vCPU; default 32). */
  guestOpsPerMs?: number;
  /** Tracked sysgenid watchers in the resumed guest (0 = no sysgenid), how many never acknowledge, and their timeout. */
  watchers?: number;
  stuckWatchers?: number;
  watcherTimeoutMs?: number;
  /**
   * Called once the destination can take a HELLO (its memory prepared, its
   * tracker open): a one-process source connects only then, as an operator
   * starts the incoming VM before migrating into it.
   */
  onReady?: () => void;
  /** An operator's cancel (MigrationDestination's `signal`): the source is told, the partial guest discarded. */
  signal?: AbortSignal;
}

/** What receiving a guest gave: the verdict, and the running guest when it resumed. */
export interface Received<G extends ThreadedGuest | KvmSourceGuest = ThreadedGuest> {
  result: DestinationResult;
  running?: RunningGuest<G>;
  report?: ResumeReport;
}

/**
 * Receives a guest over `channel` and, when verified, resumes it (its
 * generation bumped through `sysgenid` when given). The caller stops the
 * running guest (or migrates it onward).
 */
export async function receiveGuest<B extends BackendName = 'sim'>(
  p: DestinationParams<B>,
  channel: FrameChannel,
  sysgenid?: GuestSysgenid,
): Promise<Received<GuestOf<B>>> {
  let log: MigrationLog | undefined;
  const prepared = p.prepared;
  let tracker: DestinationTracker;
  try {
    tracker = p.tracker ?? DestinationTracker.open(p.db);
  } catch (err) {
    channel.close(); // a source already connected must not wait out its --peer-timeout for an answer
    throw err;
  }
  p.onReady?.();
  const dest = new MigrationDestination<MigratableMemory>({
    channel,
    peerTimeoutMs: p.peerTimeoutMs,
    handshakeTimeoutMs: p.handshakeTimeoutMs,
    psp: p.psp,
    tracker,
    signal: p.signal,
    allocate: (npages, hello) => {
      if (prepared && npages !== prepared.npages)
        throw new GuestMismatchError(
          '--memory',
          `the source's guest is ${formatBytes(npages * PAGE_SIZE)} (${npages} pages) but this destination was started with --memory ${formatBytes(prepared.npages * PAGE_SIZE)}; start it with the source's --memory, or without --memory`,
        );
      // A two-process destination holds one guest: refuse what this machine cannot hold.
      guestPagesFor(npages * PAGE_SIZE, { guests: 1 });
      if (p.log)
        log = MigrationLog.create(p.log, {
          role: 'destination',
          npages,
          vcpus: hello.vcpus,
          protocol: hello.protocol,
          verify: hello.verify,
          params: { peerTimeoutMs: p.peerTimeoutMs, handshakeTimeoutMs: p.handshakeTimeoutMs, psp: p.psp },
        });
      if (prepared) return prepared;
      return p.backend === 'kvm'
        ? allocateKvmGuest(npages, hello.vcpus)
        : GuestMemory.create(npages, { hugePages: true });
    },
    get log() {
      return log;
    },
  });
  let result: DestinationResult;
  try {
    result = await dest.run();
    log?.close({ verified: result.verified, resumed: result.resumed, mismatched: result.mismatchedPages });
  } catch (err) {
    log?.close({ aborted: (err as Error).message });
    tracker.close();
    throw err;
  } finally {
    channel.close();
  }
  if (!result.resumed) {
    tracker.close();
    return { result };
  }
  const { running, report } = await resumeGuest(result, tracker, {
    guestOpsPerMs: p.guestOpsPerMs ?? 32,
    sysgenid,
    watcherTimeoutMs: p.watcherTimeoutMs ?? 0,
  });
  // The guest resumed is of the backend this destination allocated (B).
  return { result, running: running as RunningGuest<GuestOf<B>>, report };
}

/**
 * A sim destination's memory of `npages`, allocated and made resident now
 * (DestinationParams.prepared): before the destination can be connected to,
 * so preparing it never counts in a migration's time. Throws, naming the
 * limit, when this machine cannot hold the guest; a run cancelled meanwhile
 * (`signal`, or a 'stop' to the destination's thread) ends within a step of
 * GuestMemory.makeResident (a SIGINT 0.3 s into `sevtrack migrate --memory
 * 4G` once took 3-14 s to exit).
 */
export async function prepareGuestMemory(npages: number, signal?: AbortSignal): Promise<GuestMemory> {
  guestPagesFor(npages * PAGE_SIZE, { guests: 1 });
  const memory = GuestMemory.create(npages, { hugePages: true });
  await memory.makeResident(signal);
  return memory;
}

/** Starts the guest's sysgenid when watchers are asked for. */
export function startGuestSysgenid(p: {
  watchers?: number;
  stuckWatchers?: number;
}): Promise<GuestSysgenid | undefined> {
  if (!p.watchers) return Promise.resolve(undefined);
  return GuestSysgenid.start({ watchers: p.watchers, stuck: p.stuckWatchers ?? 0 });
}

/**
 * The destination side over `channel`: receive, verify, resume; the guest
 * shows it runs (its heartbeat moves, its watchers acknowledge) and is then
 * stopped, or handed to `then` (a migration onward) first.
 */
export async function runDestination(
  p: DestinationParams<BackendName>,
  channel: FrameChannel,
  then?: (running: RunningGuest) => Promise<void>,
): Promise<DestinationOutcome> {
  const sysgenid = await startGuestSysgenid(p).catch((err: unknown) => {
    p.tracker?.close(); // handed to this run, which ends here
    throw err;
  });
  try {
    const { result, running, report } = await receiveGuest(p, channel, sysgenid);
    try {
      if (running && then) await then(running);
    } finally {
      await running?.stop();
    }
    return { ...verdictOf(result), backend: result.hello.backend ?? 'sim', resume: report };
  } finally {
    await sysgenid?.close();
  }
}

/** The destination's side of a run: its verdict (the guest it built is dropped) and how it resumed. */
export type DestinationVerdict = Omit<
  DestinationResult,
  'hello' | 'memory' | 'cbitState' | 'migrationControl' | 'vcpuState'
>;

export interface DestinationOutcome extends DestinationVerdict {
  /** The backend of the guest received (the HELLO's; set by runDestination). */
  backend?: BackendName;
  /** How the guest resumed (undefined when it did not). */
  resume?: ResumeReport;
}

export interface DestinationWorkerData extends Pick<DestinationParams, 'db'> {
  /** The guest's size: the worker prepares its memory before it says it is ready. */
  preparedNpages?: number;
  /**
   * How the source reaches the worker: a MessagePort (`inproc`), or an
   * address the worker listens on for one source (`unix`, `tcp`: a real
   * socket between the two threads).
   */
  link: { port: MessagePort } | { listen: Endpoint };
  peerTimeoutMs: number;
  handshakeTimeoutMs: number;
  psp: PspLimits;
  guestOpsPerMs: number;
}

/**
 * What the worker reports back: that it is ready (once; with the bound
 * address when it listens: its memory prepared, its tracker open), then the
 * verdict, without the guest.
 */
export type DestinationWorkerMessage = { ready: true; endpoint?: Endpoint } | DestinationWorkerResult;

export interface DestinationWorkerResult extends Partial<DestinationOutcome> {
  ready?: undefined;
  ok: boolean;
  error?: string;
  /** The failure's code (SevtrackError), and whether it was a misuse (bad input: exit 2), so the parent rebuilds its kind. */
  code?: string;
  misuse?: boolean;
}

/** The verdict part of a destination result (what crosses a thread). */
export function verdictOf(r: DestinationResult): DestinationVerdict {
  const { hello: _h, memory: _m, cbitState: _c, migrationControl: _mc, vcpuState: _v, ...verdict } = r;
  return verdict;
}
