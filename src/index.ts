/**
 * sevtrack's public library API: what a VMM author embeds. Everything here is
 * also what the `sevtrack` command uses; the layers and their rules are in
 * docs/design.md, the wire and disk formats in docs/.
 *
 * Import from the package root only (`import { CbitStore } from 'sevtrack'`);
 * the modules behind it are free to move.
 */

// ---- Errors -------------------------------------------------------------

/**
 * The error tree. Every error sevtrack throws is a `SevtrackError` with a
 * stable `code`: `MisuseError` for the caller's fault (bad input, unknown VM,
 * a database that is not ours), `RuntimeFailure` for what went wrong at run
 * time (a broken invariant, a dead peer).
 */
export {
  DatabaseFormatError,
  FormatError,
  InvalidArgumentError,
  InvariantError,
  KvmError,
  KvmUnavailableError,
  MisuseError,
  NativeAddonMissingError,
  PeerError,
  RuntimeFailure,
  SevtrackError,
  UnknownVmError,
} from './common/errors.js';

// ---- The KVM ABI --------------------------------------------------------

/**
 * KVM's hypercall ABI, numbers exactly as Linux defines them:
 * `KVM_HC_MAP_GPA_RANGE` (12) and its attribute bits, the return codes
 * (`-KVM_EINVAL`, `-KVM_ENOSYS`), the CPUID feature bits and
 * `MSR_KVM_MIGRATION_CONTROL`.
 *
 * `decodeHypercall(nr, a0, a1, a2, guestPages)` returns either the page-range
 * change the call asks for (`{ ok: true, change }`) or the KVM return code the
 * host must answer and why (`{ ok: false, ret, reason }`). It is pure: it
 * changes nothing, so a VMM decodes first and applies only what decoded.
 * `encodeAttributes(encrypted, pageSizeCode)` builds a2 the way Linux does.
 */
export {
  type DecodeResult,
  decodeHypercall,
  encodeAttributes,
  type GpaRangeChange,
  KVM_CPUID_FEATURES,
  KVM_EINVAL,
  KVM_ENOSYS,
  KVM_FEATURE_HC_MAP_GPA_RANGE,
  KVM_FEATURE_MIGRATION_CONTROL,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MAP_GPA_RANGE_DECRYPTED,
  KVM_MAP_GPA_RANGE_ENCRYPTED,
  KVM_MAP_GPA_RANGE_PAGE_SZ_1G,
  KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
  KVM_MAP_GPA_RANGE_PAGE_SZ_4K,
  KVM_MIGRATION_READY,
  MSR_KVM_MIGRATION_CONTROL,
} from './common/kvm-abi.js';
/** Page ranges are `(gfn, npages)` everywhere; `PAGE_SIZE` is 4096. */
export { PAGE_SIZE, type PageRange, type StateRange } from './common/ranges.js';

// ---- The host tracker ---------------------------------------------------

/**
 * `CbitStore`: the full c-bit state of every registered VM in one SQLite
 * database (WAL), with an ordered change log and syncs.
 *
 * Ordering: `applyHypercall` validates and applies a change in memory and
 * returns its KVM return code and sequence number; the change is durable only
 * after `commit()` returns, and a VMM must not complete the guest's exit
 * before that (or must batch exits so every change a `sync()` consumed is
 * committed before the sync is answered). `sync(vm)` returns the ranges whose
 * c-bit changed since the previous sync and the sequence it consumed up to.
 */
export { CbitStore, type OpenOptions, type SyncResult, type VmInfo } from './host/cbit-store.js';
/**
 * `checkDatabase(path)`: the full integrity check of a host database
 * (`sevtrack state --check`): SQLite's own check, every change-log segment's
 * chained checksum and sequence, every checkpoint against the log, every
 * sync. Read-only; returns a report with one line per problem.
 */
export { checkDatabase, type IntegrityReport, type VmCheck } from './host/integrity.js';
/**
 * A migration's record in the host service (MIGRATION_BEGIN/END): its
 * destination, every sync taken while it was open, and its outcome
 * (`CbitStore.migrationRecords(vm)`, `sevtrack state`).
 */
export type { MigrationOutcome, MigrationRecord } from './host/migration-records.js';
/**
 * `PageStateMap`: c-bit state as coalesced `(gfn, npages)` ranges, with
 * copy-on-write clones and a diff between two maps. Pure in-memory.
 */
export { PageStateMap } from './host/page-state-map.js';
/**
 * `HostServiceClient`: a client of `sevtrack serve` over its unix socket
 * (docs/host-protocol.md). Each call resolves once the service answered;
 * a hypercall's reply comes only after the change is committed. A malformed
 * reply rejects the pending calls and is emitted as 'error' (when listened
 * for); the service's SHUTTING_DOWN notice is emitted as 'shutdown'.
 */
export {
  HostServiceClient,
  type HypercallReply,
  ServiceFailedError,
  ServiceRejectedError,
  type SyncReply,
} from './host/service-client.js';
/**
 * `HostService`: the socket service itself, for a VMM that hosts it in its
 * own process. Replies to hypercalls only after their commit.
 */
export { HostService, type HostServiceOptions } from './host/service-server.js';

// ---- The guest helper ---------------------------------------------------

/**
 * `GuestKernel`: the guest kernel helper (Linux's set_memory_encrypted /
 * set_memory_decrypted). Ordering (guest contract, docs/design.md rule 5):
 * it changes the guest's own c-bit table first, then notifies the host with
 * one `KVM_HC_MAP_GPA_RANGE` per page-table chunk, and returns only after
 * every notification returned; callers write under the new c-bit only then.
 */
export { GuestKernel, type GuestKernelOptions, pageTableChunks } from './guest/guest-kernel.js';
/** What a guest sees of its memory and of its hypercall instruction. */
export type { GuestMemoryView } from './guest/guest-memory-view.js';
export type { CpuidResult, HypercallPort } from './guest/hypercall-port.js';
/** The seeded guest workloads (`idle`, `boot`, `swiotlb`, `churn`, `write-heavy`, `mixed`). */
export { WORKLOADS, type WorkloadName } from './guest/workloads.js';

// ---- The VMM ------------------------------------------------------------

/**
 * The backend interface the migration engine drives (pause, resume, vCPU
 * state) and the guest memory it migrates (`MigratableMemory`: raw bytes,
 * the memory-encryption model, c-bits, dirty log, the destination's
 * vCPU-state hook), whichever backend (`BACKENDS`: sim, kvm) holds it.
 */
export {
  BACKENDS,
  type BackendName,
  type InterleavingPoint,
  type MigratableMemory,
  type SourceGuest,
} from './vmm/backend.js';
/** `DirectPort`: a guest's hypercall port straight into a `CbitStore` on the same thread (commit per call). */
export { DirectPort } from './vmm/direct-port.js';
/**
 * Exit handling: where a VMM forwards a guest's MAP_GPA_RANGE hypercalls and
 * migration-control MSR writes. `InProcessBackend` applies them to a
 * `CbitStore` in this process; `SocketBackend` forwards them to `sevtrack
 * serve` and resolves once the service has committed them. The sim
 * backend's vCPUs validate their hypercalls on their own threads and hand
 * the changes over through per-vCPU rings (`applyValidated`, in order).
 */
export {
  FULL_SUPPORT,
  type HypercallBackend,
  InProcessBackend,
  SocketBackend,
  UnsupportedBackend,
  type ValidatedChange,
} from './vmm/hypercall-backend.js';
/**
 * The `kvm` backend (docs/kvm.md): a real VM on /dev/kvm running the guest
 * helper. `KvmGuest.create` throws `KvmUnavailableError` naming the reason
 * where KVM cannot run it (`kvmAvailability()` says so without throwing).
 * Records of the guest's hypercalls and events reach listeners in batches,
 * each vCPU's in order, queued before the guest saw the return value;
 * `pause()` returns with every vCPU at a clean point and every record
 * delivered; `harvestDirty` must precede the page copies it covers.
 */
export {
  type KvmAvailability,
  kvmAvailability,
  kvmSkipReason,
  requireKvm,
} from './vmm/kvm/availability.js';
export { GuestEvent, KVM_WORKLOADS, type KvmWorkload, type VcpuCounters } from './vmm/kvm/control-page.js';
/** `doctorReport()`: what this host offers and what sevtrack will use (`sevtrack doctor`). */
export { type DoctorReport, doctorReport } from './vmm/kvm/doctor-report.js';
export {
  type GuestEventRecord,
  KvmGuest,
  type KvmGuestOptions,
  type KvmProfile,
  type RecordBatch,
  type ShimCall,
} from './vmm/kvm/kvm-guest.js';
/**
 * A KVM guest in the migration engine: `KvmMemory` (its RAM as
 * MigratableMemory, the keystream as its codec) and `KvmSourceGuest` (pauses
 * at a clean point: the helper's stop word first, then immediate_exit).
 */
export { KvmMemory } from './vmm/kvm/migratable-memory.js';
export { KvmSourceGuest, stopAtCleanPoint } from './vmm/kvm/source-guest.js';
export { TrackerLink } from './vmm/kvm/tracker-link.js';
/** Resolves on the first record batch that satisfies a condition; rejects when a vCPU fails. */
export { waitForBatch, waitForEveryVcpu } from './vmm/kvm/wait-for.js';
/** The `sim` backend: guest memory with the SEV encryption model, and vCPU worker threads. */
export { GuestMemory, type GuestMemoryDescriptor } from './vmm/sim/guest-memory.js';
export { ThreadedGuest } from './vmm/sim/threaded-guest.js';
export { type GuestStats, VcpuPool, type VcpuPoolOptions } from './vmm/sim/vcpu-pool.js';

// ---- Migration ----------------------------------------------------------

/** The guest kernel's own area in guest memory: its c-bit table and heartbeat (docs/migration-stream.md). */
export { KERNEL_ROOT_GFN, kernelPages } from './guest/kernel-area.js';
/** Frame channels: an in-memory pair, or a unix/tcp socket (`listenChannel` / `connectChannel`). */
export { type FrameChannel, memoryChannelPair } from './migration/channel.js';
/**
 * Convergence: `NotConvergingError` (exit 3) when --max-downtime cannot be
 * met within --max-rounds and `onNoConvergence` is 'abort' (the default);
 * the source guest runs on, unpaused.
 */
export { NotConvergingError, ON_NO_CONVERGENCE, type OnNoConvergence } from './migration/convergence.js';
/**
 * `MigrationDestination.run()` receives a guest, applies the final c-bit
 * state, verifies and resumes it, and resolves with the verdict; it resumes
 * nothing unless every page and the state are in and verified.
 */
export {
  type DestinationOptions,
  type DestinationResult,
  MigrationDestination,
} from './migration/destination.js';
/** A verified destination guest runs on: vCPUs from the migrated registers, the generation bumped, watchers waited for. */
export {
  guestHeartbeat,
  type ResumeReport,
  type RunningGuest,
  resumeGuest,
} from './migration/destination-resume.js';
/**
 * The destination's own tracker: a SQLite CbitStore recording the
 * perspective each page arrived with, the final state, and the checks that
 * make a disagreement a protocol error before resume.
 */
export {
  DESTINATION_VM,
  DestinationTracker,
  type TrackerCheck,
} from './migration/destination-tracker.js';
export {
  connectChannel,
  type Endpoint,
  type Listener,
  type ListenOptions,
  listenChannel,
  type Transport,
} from './migration/endpoints.js';
/**
 * The migration log (docs/migration-log.md): `MigrationLogReader.open(path)`
 * checks a log (identity, version, SQLite integrity, digest chain, event
 * rules) and throws `MigrationLogError` naming the problem and the first bad
 * event; `summarizeLog` gives it per round. `MigrationLog` writes one.
 */
export type { EventKind, LogEvent, LogMeta } from './migration/log-events.js';
export { type LogContents, MigrationLogReader } from './migration/log-reader.js';
export { LOG_VERSION, type LogProblem, MigrationLogError } from './migration/log-schema.js';
export { type LogSummary, type RoundSummary, summarizeLog } from './migration/log-summary.js';
export {
  type ConversionRecord,
  type LogIdentity,
  MigrationLog,
  type VerificationRecord,
} from './migration/migration-log.js';
/** The PSP model's limits (`rate` pages/s, 0 = unlimited; `batch` pages per command). */
export { type PspLimits, UNLIMITED_PSP } from './migration/psp.js';
/**
 * Chains: `migrateChain` migrates one running guest `hops` times in this
 * process; `runRelay` is a destination that migrates the guest it resumed
 * onward (`--then-connect`).
 */
export {
  type ChainSummary,
  chainOf,
  type HopSummary,
  migrateChain,
  runRelay,
} from './migration/run-chain.js';
/**
 * The destination side over a channel (a two-process destination): receive,
 * verify, resume; `receiveGuest` hands back the running guest.
 */
export {
  type DestinationOutcome,
  type DestinationParams,
  receiveGuest,
  runDestination,
} from './migration/run-destination.js';
/**
 * The main job as a call: `migrateLocally(params)` builds a simulated guest,
 * runs it, and migrates it to a destination in this process; it resolves
 * with the source's summary and the destination's verdict. `migrateGuest`
 * migrates a guest you built yourself.
 */
export {
  type BootedGuest,
  bootGuest,
  DEFAULT_PARAMS,
  type MigrateParams,
  migrateGuest,
  migrateLocally,
} from './migration/run-migration.js';
/**
 * `MigrationSource.run()` migrates a guest over a frame channel and resolves
 * with its summary; on any failure it resumes the guest unpaused and intact
 * and rejects. Ordering (docs/design.md rules 2-4): each round harvests the
 * dirty log before it syncs the c-bit state; the paused round diffs the full
 * state against the last sync and resends every page whose c-bit changed.
 */
export {
  type DowntimePhases,
  MigrationRefusedError,
  MigrationSource,
  type MigrationSummary,
  type RoundProgress,
  type SourceOptions,
} from './migration/source.js';
/** Protocol variants and verification modes, by their CLI names. */
export {
  MIGRATION_FRAME,
  PROTOCOLS,
  type Protocol,
  VERIFY_MODES,
  type VerifyMode,
  type VerifyResult,
} from './migration/stream.js';
/**
 * `Tracker`: what the migration source needs of the c-bit tracker (syncs,
 * change counters, READY). A `CbitStore` is one as it is; `ServiceTracker`
 * asks a running `sevtrack serve` (set `MigrateParams.service` to migrate
 * against one: the guest's exits go there too). `ServiceLostError`: the
 * service went away mid-migration, which aborted; the source guest runs on.
 */
export type { MaybePromise, Tracker } from './migration/tracker.js';
export { ServiceLostError, type ServiceTarget } from './migration/tracker-host.js';
export { type ServiceRecord, ServiceTracker } from './migration/tracker-service.js';
/**
 * Connecting a VMM to `sevtrack serve`: `connectService` (a clear error for a
 * path with no socket, `ServiceUnavailableError` when nobody answers) and
 * `attachServiceVm` (registers the guest, or takes over a fresh registration
 * of its shape, and returns the backend that forwards its exits).
 */
export {
  attachServiceVm,
  connectService,
  ServiceUnavailableError,
  type ServiceVm,
} from './vmm/service-vm.js';
/** The simulated vCPUs' registers, as they travel in the VMSA. */
export { decodeVcpuState, encodeVcpuState, type VcpuRegisters } from './vmm/sim/vcpu-state.js';

// ---- Exploration --------------------------------------------------------

/** The outcomes docs/design.md §3 expects of each variant, by contract and verification mode. */
export { EXPECTED, type Expectation, expectedOutcome } from './explore/expected.js';
/**
 * `explore(options)` runs seeded random schedules (or, with `exhaustive`,
 * every schedule of a small model) of guest c-bit changes and writes against
 * each protocol variant's migration thread, and returns per variant the
 * schedules run, the corrupted ones, the shortest counterexample as a
 * timeline, and whether that matches `EXPECTED` (docs/explore.md). It throws
 * InvalidArgumentError for a bad option or a model too large to search.
 */
export {
  type Counterexample,
  type ExploreOptions,
  type ExploreReport,
  explore,
  type ProtocolReport,
} from './explore/explorer.js';
/**
 * The model, for replaying schedules or recorded guest events: `Model` (a
 * world, one variant's migration thread and the guest contract; `enabled()`,
 * `apply()`, `corrupted()`), `replaySchedule()` and `renderTimeline()`.
 */
export { CONTRACTS, type Contract, Model, type ModelConfig, type Step } from './explore/model.js';
/** What each variant does in a live and in the paused round, and the thread that carries it out. */
export { MigrationThread, PLANS, type ProtocolPlan, type RoundPlan } from './explore/protocol.js';
export { replaySchedule } from './explore/schedule.js';
export { renderTimeline } from './explore/timeline.js';
/** The explorer's world: one method per guest and host event, with a listener for them. */
export { type ModelEvent, World } from './explore/world.js';

// ---- sysgenid -----------------------------------------------------------

/**
 * sysgenid (docs/sysgenid.md): a system generation counter that grows when a
 * VM is restored or resumes after migration. `SysgenidService` serves it on a
 * Unix socket and mirrors it into a one-page counter file (mmap it read-only;
 * offset 0 is the little-endian u32). One `SysgenidClient` connection is one
 * watcher: `generations()` yields each new generation once, `acknowledge()`
 * confirms it. Ordering rule for clients: the value may change right after it
 * is read, so check, do the work, and check again before relying on it.
 */
export { SysgenidClient } from './sysgenid/client.js';
export {
  COUNTER_FILE_BYTES,
  COUNTER_FILE_MAGIC,
  COUNTER_FILE_VERSION,
  CounterFile,
  defaultCounterFile,
  defaultSocketPath,
} from './sysgenid/counter-file.js';
/** sysgenid's errors carry the errno the kernel proposal returned for the same case. */
export { Errno, errnoOf, SysgenidRequestError, SysgenidStateError } from './sysgenid/errors.js';
/**
 * A simulated guest's sysgenid in one handle (service + tracked watchers):
 * start it with the guest; on resume at the destination, `resume()` bumps and
 * waits for the watchers (the migration wiring's entry point).
 */
export { GuestSysgenid, type GuestSysgenidOptions } from './sysgenid/guest-sysgenid.js';
/**
 * The overseer moves a restored system from transient to available:
 * `bumpAndWait` bumps, waits for tracked watchers up to the timeout, and
 * reports who acknowledged and who timed out.
 */
export {
  type BumpAndWaitOptions,
  type BumpAndWaitResult,
  bumpAndWait,
  Overseer,
} from './sysgenid/overseer.js';
export type { WatcherInfo } from './sysgenid/protocol.js';
export { SysgenidService, type SysgenidServiceOptions } from './sysgenid/service.js';
/** Simulated guest watchers (each reseeds a small random pool, then acknowledges), for tests and migrations. */
export type { WatcherEvent, WatcherSpec } from './sysgenid/simulated-watcher.js';
export {
  type StartWatchersOptions,
  startWatchers,
  WatcherFleet,
  type WatcherStats,
} from './sysgenid/watchers.js';

// ---- Replay of migration logs ---------------------------------------------

/**
 * `replay(path, { verify?, protocol?, explainLimit? })` rebuilds the
 * destination of a migration from its source log (`migrate --log`),
 * verifies every page against the guest's view at pause, names the chain of
 * events behind each corrupted page, says whether that agrees with the
 * engine's recorded verdict, and with `protocol` re-runs the recorded guest
 * events under that variant (docs/replay.md). Throws MigrationLogError for a
 * log it cannot trust, naming the first bad event.
 */
export { type ReplayOptions, type ReplayReport, type ReplayRound, replay } from './explore/replay.js';
/** The chain of events of one corrupted page, as `replay()` reports it. */
export type { CauseKind, PageCause } from './explore/replay-causes.js';
/** A checked source log as arrays per page (the replay's input). */
export { loadRecording, type Recording } from './explore/replay-log.js';
/** The replay's per-round timeline chart, as SVG text. */
export { renderPlot } from './explore/replay-plot.js';
/** What-if: the recorded guest events under another variant. */
export { type WhatIf, type WhatIfRound, whatIf } from './explore/replay-whatif.js';
