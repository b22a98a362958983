/**
 * `sevtrack migrate`: the main job. With no flags: the embedded default run
 * (see DEFAULT_PARAMS). `--backend kvm` migrates a real VM (migrate-backend.ts).
 */

import type { Command } from 'commander';
import { InvalidArgumentError, SevtrackError } from '../../common/errors.js';
import { formatBytes, parseIntIn, parseSize } from '../../common/units.js';
import { parseWorkload, WORKLOADS } from '../../guest/workloads.js';
import { ON_NO_CONVERGENCE, type OnNoConvergence } from '../../migration/convergence.js';
import type { ResumeReport } from '../../migration/destination-resume.js';
import { DestinationTracker } from '../../migration/destination-tracker.js';
import {
  connectChannel,
  describeEndpoint,
  type Listener,
  listenChannel,
  parseEndpoint,
  type Transport,
} from '../../migration/endpoints.js';
import { KVM_MIGRATE_WORKLOADS } from '../../migration/kvm-guests.js';
import {
  type ChainSummary,
  chainOf,
  type HopSummary,
  migrateChain,
  runRelay,
} from '../../migration/run-chain.js';
import {
  type DestinationOutcome,
  prepareGuestMemory,
  runDestination,
} from '../../migration/run-destination.js';
import {
  DEFAULT_PARAMS,
  guestPages,
  type MigrateParams,
  migrateLocally,
  runSource,
} from '../../migration/run-migration.js';
import { describeDowntimePhases, type MigrationSummary, type RoundProgress } from '../../migration/source.js';
import { PROTOCOLS, type Protocol, VERIFY_MODES, type VerifyMode } from '../../migration/stream.js';
import { BACKENDS, type BackendName } from '../../vmm/backend.js';
import { cancelOnSignals } from '../cancel-on-signals.js';
import { oneOf } from '../choice.js';
import { CheckFailedError, EXIT_ABORTED, exitCodeFor, runAction } from '../run-action.js';
import { KVM_DEFAULT_MEMORY, KVM_DEFAULT_WORKLOAD, kvmParams } from './migrate-backend.js';

const SIM_DEFAULT_MEMORY = '256M';

interface MigrateFlags {
  backend: string;
  memory?: string;
  vcpus: string;
  workload?: string;
  protocol: string;
  seed: string;
  transport: string;
  role: string;
  listen?: string;
  connect?: string;
  log?: string;
  maxDowntime: string;
  maxRounds: string;
  onNoConvergence: string;
  pspRate: string;
  pspBatch: string;
  verify: string;
  forceUnsafe?: boolean;
  peerTimeout: string;
  handshakeTimeout: string;
  readCost: string;
  guestRate: string;
  hops: string;
  db?: string;
  thenConnect?: string;
  watchers: string;
  stuckWatchers: string;
  watcherTimeout: string;
  service?: string;
  vm?: string;
  json?: boolean;
}

/** `--service SOCKET --vm ID`: both or neither; the source's tracker (never a destination's). */
function serviceTarget(f: MigrateFlags, role: string): MigrateParams['service'] {
  if (f.service === undefined && f.vm === undefined) return undefined;
  if (f.service === undefined)
    throw new InvalidArgumentError('--vm', '--vm names a VM of the host service: pass --service SOCKET too');
  if (f.vm === undefined)
    throw new InvalidArgumentError(
      '--service',
      '--service needs --vm ID: the id the host service tracks this guest under',
    );
  if (role === 'destination')
    throw new InvalidArgumentError(
      '--service',
      "--service is the source guest's tracker; use it with --role source or both",
    );
  if (f.service.length === 0)
    throw new InvalidArgumentError('--service', '--service must be the socket path of `sevtrack serve`');
  return { socket: f.service, vm: parseIntIn(f.vm, '--vm', 0, 0xffff_ffff) };
}

/** `given(attr)`: whether the user set that flag (the kvm backend refuses sim-only flags). */
function toParams(f: MigrateFlags, given: (attr: string) => boolean): MigrateParams {
  const backend = oneOf<BackendName>(f.backend, BACKENDS, '--backend');
  const p: MigrateParams = {
    ...DEFAULT_PARAMS,
    memoryBytes: backend === 'sim' ? parseSize(f.memory ?? SIM_DEFAULT_MEMORY, '--memory') : 0,
    vcpus: parseIntIn(f.vcpus, '--vcpus', 1, 64),
    workload: backend === 'sim' ? parseWorkload(f.workload ?? DEFAULT_PARAMS.workload) : 'churn',
    protocol: oneOf<Protocol>(f.protocol, PROTOCOLS, '--protocol'),
    verify: oneOf<VerifyMode>(f.verify, VERIFY_MODES, '--verify'),
    seed: parseIntIn(f.seed, '--seed', 0, 2 ** 31),
    transport: oneOf<Transport>(f.transport, ['inproc', 'unix', 'tcp'], '--transport'),
    maxDowntimeMs: parseIntIn(f.maxDowntime, '--max-downtime', 0, 3_600_000),
    maxRounds: parseIntIn(f.maxRounds, '--max-rounds', 1, 10_000),
    onNoConvergence: oneOf<OnNoConvergence>(f.onNoConvergence, ON_NO_CONVERGENCE, '--on-no-convergence'),
    psp: {
      rate: parseIntIn(f.pspRate, '--psp-rate', 0, 100_000_000),
      batch: parseIntIn(f.pspBatch, '--psp-batch', 1, 65_536),
    },
    forceUnsafe: f.forceUnsafe ?? false,
    peerTimeoutMs: parseIntIn(f.peerTimeout, '--peer-timeout', 100, 3_600_000),
    handshakeTimeoutMs: parseIntIn(f.handshakeTimeout, '--handshake-timeout', 100, 3_600_000),
    readCostNsPerPage: parseIntIn(f.readCost, '--read-cost', 0, 1_000_000),
    guestOpsPerMs: parseIntIn(f.guestRate, '--guest-rate', 0, 1_000_000),
    log: f.log,
    hops: parseIntIn(f.hops, '--hops', 1, 1000),
    db: f.db,
    watchers: parseIntIn(f.watchers, '--watchers', 0, 10_000),
    stuckWatchers: parseIntIn(f.stuckWatchers, '--stuck-watchers', 0, 10_000),
    watcherTimeoutMs: parseIntIn(f.watcherTimeout, '--watcher-timeout', 0, 3_600_000),
  };
  return backend === 'kvm' ? kvmParams(p, f, given) : p;
}

/** Checks the flags that only some roles take; throws naming the flag. */
function checkRoleFlags(f: MigrateFlags, p: MigrateParams, role: string): void {
  if (p.stuckWatchers > p.watchers)
    throw new InvalidArgumentError(
      '--stuck-watchers',
      `--stuck-watchers ${p.stuckWatchers} is more than --watchers ${p.watchers}; at most all of them can be stuck`,
    );
  if (p.hops > 1 && role !== 'both')
    throw new InvalidArgumentError(
      '--hops',
      '--hops runs every hop in this process (--role both); across processes chain destinations with --then-connect',
    );
  if ((p.hops > 1 || p.watchers > 0) && p.log && role === 'both')
    throw new InvalidArgumentError(
      '--log',
      '--log records a migration whose destination runs apart; in one process it cannot be combined with --hops or --watchers (run the destination as its own process with --role)',
    );
  if (p.hops > 1 || (p.watchers > 0 && role === 'both')) {
    if (p.transport !== 'inproc')
      throw new InvalidArgumentError(
        '--transport',
        '--hops and --watchers in one process migrate over an in-process channel; use --role source/destination for unix or tcp',
      );
  }
  if (f.thenConnect && role !== 'destination')
    throw new InvalidArgumentError('--then-connect', '--then-connect is for --role destination');
  if (p.service && (p.hops > 1 || p.watchers > 0) && role === 'both')
    throw new InvalidArgumentError(
      '--service',
      '--service tracks one source guest; in one process it cannot be combined with --hops or --watchers',
    );
  if (f.db && role === 'source')
    throw new InvalidArgumentError('--db', '--db names the destination tracker; the source has none to name');
}

function progressLine(p: RoundProgress): string {
  return p.paused
    ? `round ${p.round} (paused): ${p.pagesSent} pages sent in all, ${p.cbitRetransmits} resent for a c-bit change`
    : `round ${p.round}: ${p.pagesSent} pages sent in all, ${p.cbitRetransmits} c-bit resends, ${p.dirtyLeft} dirty, expected downtime ${p.expectedDowntimeMs.toFixed(1)} ms at ${p.bandwidthMBps.toFixed(0)} MB/s`;
}

function progressBar(round: number, sent: number, total: number): string {
  const width = 30;
  const filled = total === 0 ? width : Math.round((sent / total) * width);
  return `round ${round} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${total === 0 ? 100 : Math.floor((sent / total) * 100)}% ${sent}/${total} pages`;
}

function verdictLine(s: MigrationSummary): string {
  if (s.verified) return 'verified';
  if (s.resumed) return 'completed, NOT verified (nothing compared)';
  return 'FAILED verification';
}

function summaryLines(s: MigrationSummary, memoryBytes: number): string[] {
  const lines = [
    `migration ${verdictLine(s)} (${s.protocol}, ${s.verify}): ${formatBytes(memoryBytes)} ${s.backend === 'kvm' ? 'kvm ' : ''}guest`,
    `  pages compared ${s.comparedPages}, skipped ${s.skippedPages}${s.skippedPages > 0 ? ` (${s.skipReason})` : ''}, mismatched ${s.mismatchedPages}`,
    `  rounds ${s.rounds}, pages sent ${s.pagesSent} (${s.sealedPages} through the PSP, ${s.rawPages} raw), resent for a c-bit change ${s.cbitRetransmits}`,
    `  bytes ${formatBytes(s.bytes)}, throughput ${s.throughputMBps.toFixed(1)} MB/s, total ${s.totalMs.toFixed(0)} ms`,
    `  downtime ${s.downtimeMs.toFixed(1)} ms (estimated ${s.estimatedDowntimeMs.toFixed(1)} ms, ${s.converged ? 'converged' : 'did NOT converge: paused anyway (--on-no-convergence pause)'})`,
    `    ${describeDowntimePhases(s.downtimePhases)}`,
    `  verification: ${s.message}`,
    `  generation ${s.generationBefore} -> ${s.generationAfter}`,
  ];
  if (s.service)
    lines.push(
      `  host service ${s.service.socket}: vm ${s.service.vm}${s.service.registered ? ' (registered by this run)' : ''}, migration record ${s.service.migration}, ${s.service.syncs} syncs, final sync seq ${s.service.finalSyncSeq}${s.service.recordError ? `; ${s.service.recordError}` : ''}`,
    );
  return lines;
}

function resumeLines(r: ResumeReport | undefined, trackerMatchesGuest: boolean): string[] {
  if (!r) return [];
  return [
    `  destination tracker ${trackerMatchesGuest ? 'equals' : 'DIFFERS from'} the guest's own c-bit table`,
    `  the guest runs on: heartbeat ${r.heartbeatAtResume} at resume -> ${r.heartbeatAfter}`,
    `  watchers: ${r.watchersAcked} acked, ${r.watchersTimedOut} timed out; available ${r.timeToAvailableMs.toFixed(1)} ms after the bump`,
  ];
}

function printChain(c: ChainSummary, memoryBytes: number): void {
  const lines: string[] = [];
  for (const h of c.hops) {
    if (c.hops.length > 1) lines.push(`hop ${h.hop}:`);
    lines.push(...summaryLines(h, memoryBytes), ...resumeLines(h.resume, h.trackerMatchesGuest));
  }
  if (c.hops.length > 1) {
    const t = chainTotal(c);
    lines.push(
      `chain ${c.verified ? 'verified' : 'FAILED'}: ${t.verifiedHops} of ${t.hops} hops verified, ${t.pagesSent} pages sent, downtime ${t.downtimeMs.toFixed(1)} ms in all, total ${c.totalMs.toFixed(0)} ms, generation ${c.generationBefore} -> ${c.generationAfter}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

/**
 * A source that aborted (exit 3) left its guest running, resumed and intact
 * (docs/design.md rule 6): the message says so, and with --json a script
 * still gets one object saying what happened.
 */
function reportSourceAbort(err: unknown, json: boolean | undefined): unknown {
  if (exitCodeFor(err) !== EXIT_ABORTED || !(err instanceof Error)) return err;
  if (!/source guest/.test(err.message))
    err.message += '; the source guest was not migrated and keeps running';
  if (json) {
    const code = err instanceof SevtrackError ? err.code : 'ERR_INTERNAL';
    process.stdout.write(
      `${JSON.stringify({ aborted: true, code, reason: err.message, sourceGuestRunning: true })}\n`,
    );
  }
  return err;
}

function chainTotal(c: ChainSummary) {
  return {
    hops: c.hops.length,
    verifiedHops: c.hops.filter((h) => h.verified).length,
    pagesSent: c.hops.reduce((a, h) => a + h.pagesSent, 0),
    bytes: c.hops.reduce((a, h) => a + h.bytes, 0),
    downtimeMs: c.hops.reduce((a, h) => a + h.downtimeMs, 0),
    totalMs: c.totalMs,
    generationBefore: c.generationBefore,
    generationAfter: c.generationAfter,
  };
}

function resumeJson(r: ResumeReport | undefined) {
  return {
    heartbeatAtResume: r?.heartbeatAtResume ?? null,
    heartbeatAfter: r?.heartbeatAfter ?? null,
    watchersAcked: r?.watchersAcked ?? 0,
    watchersTimedOut: r?.watchersTimedOut ?? 0,
    timeToAvailableMs: r?.timeToAvailableMs ?? 0,
  };
}

function jsonSummary(s: MigrationSummary) {
  return {
    backend: s.backend,
    verified: s.verified,
    resumed: s.resumed,
    comparedPages: s.comparedPages,
    skippedPages: s.skippedPages,
    skipReason: s.skipReason,
    mismatchedPages: s.mismatchedPages,
    mismatchedGfns: s.mismatchedGfns,
    perspectiveMismatchGfns: s.perspectiveMismatchGfns,
    trackerMismatchGfns: s.trackerMismatchGfns,
    converged: s.converged,
    estimatedDowntimeMs: s.estimatedDowntimeMs,
    downtimeMs: s.downtimeMs,
    downtimePhases: s.downtimePhases,
    rounds: s.rounds,
    pagesSent: s.pagesSent,
    sealedPages: s.sealedPages,
    rawPages: s.rawPages,
    cbitRetransmits: s.cbitRetransmits,
    bytes: s.bytes,
    throughputMBps: s.throughputMBps,
    totalMs: s.totalMs,
    generationBefore: s.generationBefore,
    generationAfter: s.generationAfter,
    protocol: s.protocol,
    verify: s.verify,
    message: s.message,
    ...(s.service ? { service: s.service } : {}),
  };
}

function hopJson(h: HopSummary) {
  return {
    hop: h.hop,
    ...jsonSummary(h),
    trackerMatchesGuest: h.trackerMatchesGuest,
    ...resumeJson(h.resume),
  };
}

/** The last hop's fields at the top (as a one-hop run has always printed), the chain's verdict and generations, every hop, the totals. */
function jsonChain(c: ChainSummary): string {
  const last = c.hops[c.hops.length - 1];
  return JSON.stringify({
    ...hopJson(last),
    verified: c.verified,
    generationBefore: c.generationBefore,
    generationAfter: c.generationAfter,
    hops: c.hops.map(hopJson),
    total: chainTotal(c),
  });
}

function destinationJson(r: DestinationOutcome, onward?: MigrationSummary): string {
  return JSON.stringify({
    backend: r.backend,
    verified: r.verified,
    resumed: r.resumed,
    comparedPages: r.comparedPages,
    skippedPages: r.skippedPages,
    skipReason: r.skipReason,
    mismatchedPages: r.mismatchedPages,
    mismatchedGfns: r.mismatchedGfns,
    perspectiveMismatchGfns: r.perspectiveMismatchGfns,
    trackerMismatchGfns: r.trackerMismatchGfns,
    pagesReceived: r.pagesReceived,
    generationAfter: r.resume?.generation ?? r.generationAfter,
    ...resumeJson(r.resume),
    ...(onward ? { onward: jsonSummary(onward) } : {}),
  });
}

export function registerMigrate(program: Command): void {
  const d = DEFAULT_PARAMS;
  program
    .command('migrate')
    .description(
      'live-migrate an SEV guest, simulated or (--backend kvm) a real VM (with no flags: a simulated 256 MiB guest, 2 vCPUs, mixed workload, safe protocol, in one process)',
    )
    .option(
      '--backend <name>',
      `guest backend: sim (simulated guest) or kvm (a real VM on /dev/kvm running the guest helper; \`sevtrack doctor\` says whether this host can)`,
      'sim',
    )
    .option(
      '--memory <size>',
      `guest memory (default ${SIM_DEFAULT_MEMORY}; kvm: ${KVM_DEFAULT_MEMORY}, a multiple of 256K up to 1G). With --role destination (sim): the guest's memory is prepared before the source connects, and a source of another size is refused; without it, the source's size is taken`,
    )
    .option(
      '--vcpus <n>',
      'guest vCPUs (sim: worker threads; kvm: vCPU threads, at most 16)',
      String(d.vcpus),
    )
    .option(
      '--workload <name>',
      `guest workload: ${WORKLOADS.join(', ')} (default ${d.workload}); kvm: ${KVM_MIGRATE_WORKLOADS.join(', ')} (default ${KVM_DEFAULT_WORKLOAD})`,
    )
    .option('--protocol <name>', `protocol variant: ${PROTOCOLS.join(', ')}`, d.protocol)
    .option(
      '--verify <mode>',
      'verification: strict (every page) or defined (pages written since their last conversion)',
      d.verify,
    )
    .option('--seed <n>', 'workload seed', String(d.seed))
    .option('--transport <kind>', 'inproc, unix or tcp', d.transport)
    .option('--role <role>', 'both (one process), source or destination', 'both')
    .option('--listen <address>', 'destination: HOST:PORT (tcp) or PATH (unix) to listen on')
    .option('--connect <address>', 'source: HOST:PORT (tcp) or PATH (unix) of the destination')
    .option('--log <file>', 'record every migration event in this new SQLite file')
    .option(
      '--max-downtime <ms>',
      'pause once the expected downtime (every step of the paused phase, from rates measured in this migration) is at most this and a round no longer halves the dirty set',
      String(d.maxDowntimeMs),
    )
    .option('--max-rounds <n>', 'pause after this many rounds at the latest', String(d.maxRounds))
    .option(
      '--on-no-convergence <what>',
      'when --max-downtime cannot be met within --max-rounds: abort (exit 3, the source guest runs on) or pause anyway',
      d.onNoConvergence,
    )
    .option(
      '--psp-rate <pages/s>',
      'model a PSP of this many pages per second (0 = unlimited; a real one does 350-450)',
      '0',
    )
    .option('--psp-batch <n>', 'pages per PSP firmware call', String(d.psp.batch))
    .option('--force-unsafe', 'migrate even if the guest has not set KVM_MIGRATION_READY')
    .option(
      '--peer-timeout <ms>',
      'abort when the peer sends or takes nothing for this long',
      String(d.peerTimeoutMs),
    )
    .option(
      '--handshake-timeout <ms>',
      'destination: abort when a connected peer sends no handshake for this long',
      String(d.handshakeTimeoutMs),
    )
    .option(
      '--read-cost <ns>',
      'sim: modelled cost of each read of the dirty log and of the c-bit state, in ns per guest page (a KVM ioctl copies a bitmap of the whole guest; 4 is about 1 ms per GiB; larger models a slower host); kvm reads are real',
      String(d.readCostNsPerPage),
    )
    .option(
      '--guest-rate <ops>',
      'guest load: workload operations (page writes, conversions) per ms per vCPU (0 = as fast as the vCPU runs); a kvm guest keeps it after migration (it is in its memory)',
      String(d.guestOpsPerMs),
    )
    .option(
      '--hops <n>',
      'migrate the one running sim guest this many times in this process (A -> B -> C ...), each hop verified',
      '1',
    )
    .option(
      '--db <file>',
      "destination: its tracker's SQLite database, the migrated VM's authoritative state after resume (default: a temporary one; with --hops, the last hop's)",
    )
    .option(
      '--then-connect <address>',
      'destination: once the guest resumed, migrate it onward to HOST:PORT (tcp) or PATH (unix)',
    )
    .option(
      '--watchers <n>',
      'tracked sysgenid watchers inside the sim guest, following it from hop to hop',
      '0',
    )
    .option('--stuck-watchers <n>', 'how many of the watchers never acknowledge a new generation', '0')
    .option(
      '--watcher-timeout <ms>',
      'after the generation bump, keep the VM quiesced until every tracked watcher acknowledged or this passed (0 = wait forever)',
      String(d.watcherTimeoutMs),
    )
    .option(
      '--service <socket>',
      'source (sim): the guest reports its c-bit changes to this running `sevtrack serve`, and the migration syncs from it; the service records the migration (needs --vm)',
    )
    .option(
      '--vm <id>',
      "with --service: the VM id the service tracks this guest under. An id it does not track is registered with the guest's size; one registered ahead with the same size and no change is taken over; any other registered id is refused (exit 2)",
    )
    .option('--json', 'print the summary as one JSON object')
    .action(
      runAction(async (f: MigrateFlags, cmd: Command) => {
        const p = toParams(f, (attr) => cmd.getOptionValueSource(attr) === 'cli');
        const role = oneOf(f.role, ['both', 'source', 'destination'] as const, '--role');
        p.service = serviceTarget(f, role);
        checkRoleFlags(f, p, role);
        const tty = process.stderr.isTTY && !f.json;
        if (!f.json) {
          // On a TTY: a live bar per round; otherwise one line per round.
          p.onRound = (r) =>
            process.stderr.write(tty ? `\r\x1b[K${progressLine(r)}\n` : `${progressLine(r)}\n`);
          if (tty)
            p.onPages = (round, sent, total) =>
              process.stderr.write(`\r\x1b[K${progressBar(round, sent, total)}`);
        }
        if (role === 'destination') {
          if (!f.listen)
            throw new InvalidArgumentError('--listen', '--role destination needs --listen HOST:PORT or PATH');
          const at = parseEndpoint(f.listen, p.transport, '--listen');
          const onwardTo = f.thenConnect
            ? parseEndpoint(f.thenConnect, p.transport, '--then-connect')
            : undefined;
          // SIGINT/SIGTERM: the destination stops listening, or stops taking
          // its source's frames and ends through its error path (it tells
          // the source why, which runs its guest on, and removes its
          // temporary tracker); exit 3. A run past the source's digests, or
          // finished meanwhile, reports its outcome. With --then-connect,
          // the onward source stops as any source does. Installed before
          // anything is opened, so a signal during set-up ends it cleanly too.
          const cancel = cancelOnSignals('the incoming migration (nothing is resumed here)');
          p.signal = cancel.signal;
          let listener: Listener | undefined;
          const stop = () => listener?.close();
          cancel.signal.addEventListener('abort', stop);
          try {
            // The tracker opens before listening: a --db it cannot use is
            // refused now (exit 2), not by closing on a source that connected.
            return await DestinationTracker.whileListening(p.db, async (handOver) => {
              listener = await listenChannel(at, {
                peerTimeoutMs: p.peerTimeoutMs,
                handshakeTimeoutMs: p.handshakeTimeoutMs,
                // Always on stderr: the destination keeps listening for its source.
                onStray: (reason) => process.stderr.write(`destination: ${reason}; still listening\n`),
              });
              cancel.signal.throwIfAborted(); // a signal while it bound its address
              // --memory given: the guest's memory is prepared now, before this
              // side says it listens (a source connects only then), and a
              // source of another size is refused (a relay allocates at the HELLO).
              const prepared =
                cmd.getOptionValueSource('memory') === 'cli' && p.backend === 'sim' && !f.thenConnect
                  ? await prepareGuestMemory(guestPages(p), cancel.signal)
                  : undefined;
              // Always on stderr (also with --json): a script reads the bound port from it.
              process.stderr.write(`destination listening on ${describeEndpoint(listener.endpoint)}\n`);
              const channel = await listener.accept();
              const tracker = handOver(); // the run closes it from here
              let r: DestinationOutcome;
              let onward: MigrationSummary | undefined;
              if (onwardTo) {
                ({ destination: r, onward } = await runRelay({ ...p, tracker }, channel, () =>
                  connectChannel(onwardTo, p.peerTimeoutMs),
                ));
              } else {
                r = await runDestination({ ...p, prepared, tracker }, channel);
              }
              if (f.json) process.stdout.write(`${destinationJson(r, onward)}\n`);
              else {
                const lines = [
                  `destination: ${r.message}; ${r.pagesReceived} pages received; generation ${r.resume?.generation ?? r.generationAfter}`,
                  ...resumeLines(r.resume, r.resumed && r.trackerMismatchGfns.length === 0),
                ];
                if (onward) lines.push('onward:', ...summaryLines(onward, p.memoryBytes));
                process.stdout.write(`${lines.join('\n')}\n`);
              }
              if (!r.verified) throw new CheckFailedError(r.message);
              if (onward && !onward.verified) throw new CheckFailedError(`onward: ${onward.message}`);
              return 0;
            });
          } catch (err) {
            // What the cancel broke (the listener, the channel) says less than the cancel itself.
            if (cancel.signal.aborted && !(err instanceof CheckFailedError)) throw cancel.signal.reason;
            throw err;
          } finally {
            cancel.signal.removeEventListener('abort', stop);
            cancel.dispose();
            listener?.close();
          }
        }
        // The source side (alone or with its destination here) stops cleanly on SIGINT/SIGTERM.
        const cancel = cancelOnSignals('the migration (the source guest runs on)');
        p.signal = cancel.signal;
        try {
          if (role === 'source') {
            if (!f.connect)
              throw new InvalidArgumentError('--connect', '--role source needs --connect HOST:PORT or PATH');
            const to = parseEndpoint(f.connect, p.transport, '--connect');
            const summary = await runSource(
              { ...p, destination: `${p.transport} ${describeEndpoint(to)}` },
              () => connectChannel(to, p.peerTimeoutMs),
            );
            if (f.json) process.stdout.write(`${JSON.stringify(jsonSummary(summary))}\n`);
            else process.stdout.write(`${summaryLines(summary, p.memoryBytes).join('\n')}\n`);
            if (!summary.verified) throw new CheckFailedError(summary.message);
            return 0;
          }
          if (f.listen || f.connect)
            throw new InvalidArgumentError('--role', '--listen/--connect need --role destination/source');
          // A chain, or a guest with sysgenid watchers (they follow the guest),
          // runs every side in this thread; a plain run puts its destination on
          // a worker thread, or behind a local socket.
          let chain: ChainSummary;
          if (p.hops > 1 || p.watchers > 0) chain = await migrateChain(p);
          else {
            const { summary, destination } = await migrateLocally(p);
            chain = chainOf(summary, destination);
          }
          if (f.json) process.stdout.write(`${jsonChain(chain)}\n`);
          else printChain(chain, p.memoryBytes);
          const failed = chain.hops.find((h) => !h.verified);
          if (failed || !chain.verified)
            throw new CheckFailedError(
              failed
                ? `hop ${failed.hop}: ${failed.message}`
                : `only ${chain.hops.length} of ${p.hops} hops ran`,
            );
          return 0;
        } catch (err) {
          // An aborted source (exit 3) left its guest running: say so.
          throw reportSourceAbort(err, f.json);
        } finally {
          cancel.dispose();
        }
      }),
    );
}
