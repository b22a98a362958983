/**
 * A fleet of simulated guest watchers, each its own connection to a real
 * sysgenid service, run in worker threads (or in the calling thread with
 * threads: 0). The migration destination starts one in the resumed guest;
 * tests and benchmarks use it to load a service with many watchers.
 *
 * startWatchers resolves only once every watcher is connected AND tracked,
 * so a bump made after it counts all of them.
 */
import type { Worker } from 'node:worker_threads';
import { InvalidArgumentError, PeerError } from '../common/errors.js';
import { startWorker } from '../common/worker-script.js';
import {
  SimulatedWatcher,
  startInBatches,
  type WatcherEvent,
  type WatcherSpec,
} from './simulated-watcher.js';

export interface StartWatchersOptions {
  socketPath: string;
  /** How many of the watchers never acknowledge (the last ones); default 0. */
  stuck?: number;
  /** Worker threads to spread the watchers over; 0 runs them in this thread. Default 1. */
  threads?: number;
  /** Names are `${namePrefix}-${i}`; default "watcher". */
  namePrefix?: string;
  /** Bytes of each watcher's random pool; default 32. */
  poolBytes?: number;
}

export interface WatcherStats extends WatcherSpec {
  /** Generations this watcher was told of. */
  told: number;
  /** Generations it reseeded for and acknowledged. */
  acknowledged: number;
  lastGeneration: number | undefined;
  poolDigest: string | undefined;
}

type WorkerMessage =
  | { type: 'ready' }
  | { type: 'stopped' }
  | { type: 'event'; event: WatcherEvent }
  | { type: 'error'; message: string };

export class WatcherFleet {
  private readonly stats = new Map<string, WatcherStats>();
  private readonly listeners = new Set<() => void>();
  private readonly errors: string[] = [];

  private stop: () => Promise<void> = async () => {};

  private constructor(readonly specs: readonly WatcherSpec[]) {
    for (const s of specs) {
      this.stats.set(s.name, {
        ...s,
        told: 0,
        acknowledged: 0,
        lastGeneration: undefined,
        poolDigest: undefined,
      });
    }
  }

  private record(e: WatcherEvent): void {
    const s = this.stats.get(e.name);
    if (!s) return;
    s.told++;
    if (e.acknowledged) s.acknowledged++;
    s.lastGeneration = e.generation;
    s.poolDigest = e.poolDigest;
    for (const l of this.listeners) l();
  }

  private recordError(message: string): void {
    this.errors.push(message);
    for (const l of this.listeners) l();
  }

  /** Per watcher: how often it was told and acknowledged, its last generation and pool digest. */
  snapshot(): WatcherStats[] {
    return [...this.stats.values()].map((s) => ({ ...s }));
  }

  /** Errors the watchers hit (a lost connection, a refused request). */
  get failures(): readonly string[] {
    return this.errors;
  }

  /** Resolves once every watcher was told of `generation` (or a later one); rejects on a watcher error. */
  told(generation: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.errors.length > 0) {
          this.listeners.delete(check);
          reject(new PeerError(`a watcher failed: ${this.errors[0]}`));
        } else if ([...this.stats.values()].every((s) => (s.lastGeneration ?? -1) >= generation)) {
          this.listeners.delete(check);
          resolve();
        }
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Disconnects every watcher and ends the worker threads. */
  async close(): Promise<void> {
    await this.stop();
  }

  /** See startWatchers. */
  static async start(n: number, options: StartWatchersOptions): Promise<WatcherFleet> {
    const stuck = options.stuck ?? 0;
    const threads = options.threads ?? 1;
    if (!Number.isInteger(n) || n < 0)
      throw new InvalidArgumentError('watchers', `watchers ${n} must be an integer ≥ 0`);
    if (!Number.isInteger(stuck) || stuck < 0 || stuck > n) {
      throw new InvalidArgumentError(
        'stuck',
        `stuck watchers ${stuck} must be an integer between 0 and watchers (${n})`,
      );
    }
    if (!Number.isInteger(threads) || threads < 0) {
      throw new InvalidArgumentError('threads', `threads ${threads} must be an integer ≥ 0`);
    }
    const prefix = options.namePrefix ?? 'watcher';
    const poolBytes = options.poolBytes ?? 32;
    const specs = Array.from({ length: n }, (_, i) => ({ name: `${prefix}-${i}`, stuck: i >= n - stuck }));
    const fleet = new WatcherFleet(specs);
    if (threads === 0 || n === 0) {
      const started = await startInBatches(specs, (spec) =>
        SimulatedWatcher.start(options.socketPath, spec, {
          poolBytes,
          onEvent: (e) => fleet.record(e),
          onError: (err) => fleet.recordError(err.message),
        }),
      );
      fleet.stop = async () => {
        await Promise.all(started.map((w) => w.stop()));
      };
      return fleet;
    }
    const slices = Array.from({ length: Math.min(threads, n) }, (_, t) =>
      specs.filter((_, i) => i % threads === t),
    );
    const workers: Worker[] = [];
    try {
      await Promise.all(
        slices.map(
          (slice) =>
            new Promise<void>((resolve, reject) => {
              const worker = startWorker(import.meta.url, './watcher-worker.js', {
                workerData: { socketPath: options.socketPath, specs: slice, poolBytes },
              });
              workers.push(worker);
              worker.on('message', (msg: WorkerMessage) => {
                if (msg.type === 'ready') resolve();
                else if (msg.type === 'event') fleet.record(msg.event);
                else if (msg.type === 'error') {
                  fleet.recordError(msg.message);
                  reject(new PeerError(`watcher thread failed: ${msg.message}`));
                }
              });
              worker.once('error', (err) => {
                fleet.recordError(err.message);
                reject(err);
              });
            }),
        ),
      );
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
    fleet.stop = async () => {
      await Promise.all(
        workers.map(
          (w) =>
            new Promise<void>((resolve) => {
              w.once('exit', () => resolve());
              w.on('message', (msg: WorkerMessage) => {
                if (msg.type === 'stopped') void w.terminate();
              });
              w.postMessage({ type: 'stop' });
            }),
        ),
      );
    };
    return fleet;
  }
}

/** Starts n tracked watchers (the last `stuck` of them never acknowledge); resolves once all are tracked. */
export function startWatchers(n: number, options: StartWatchersOptions): Promise<WatcherFleet> {
  return WatcherFleet.start(n, options);
}
