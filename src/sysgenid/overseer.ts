/**
 * The overseer (docs/sysgenid.md, "The overseer"): the one party that moves
 * a restored system from transient to available. It bumps the generation,
 * keeps the system quiesced while tracked watchers rebuild their state, and
 * declares it available once every tracked watcher acknowledged or the
 * timeout passed, saying which watchers did which.
 *
 * Ordering rules: the overseer's own connection is a watcher too, and every
 * bump makes it outdated, so it acknowledges the new generation BEFORE it
 * waits (or the wait fails EINTR at once). If someone else bumps while it
 * waits (EINTR), it acknowledges the newer generation and waits out the rest
 * of its timeout; the result names the last generation.
 */
import { InvalidArgumentError } from '../common/errors.js';
import { SysgenidClient } from './client.js';
import { errnoOf } from './errors.js';
import type { WatcherInfo } from './protocol.js';

export interface BumpAndWaitOptions {
  /** The generation is set to max(min, current + 1); default 0. */
  min?: number;
  /** How long tracked watchers get to acknowledge, in ms; 0 waits forever. */
  watcherTimeoutMs: number;
}

export interface BumpAndWaitResult {
  /** The generation the system runs at now. */
  generation: number;
  /** Tracked watchers that acknowledged `generation`. */
  watchersAcked: number;
  /** Tracked watchers still outdated when the timeout passed. */
  watchersTimedOut: number;
  /** From sending the bump until the system was declared available, in ms. */
  timeToAvailableMs: number;
  /** Whether the wait ended at the timeout (watchersTimedOut > 0). */
  timedOut: boolean;
  /** Who acknowledged and who timed out (names, pids, uids from the watcher table). */
  acked: WatcherInfo[];
  timedOutWatchers: WatcherInfo[];
}

export class Overseer {
  private constructor(private readonly client: SysgenidClient) {}

  /** Connects to the service (an untracked watcher; bumping needs root or an allowed uid). */
  static async connect(socketPath: string): Promise<Overseer> {
    const client = await SysgenidClient.connect(socketPath);
    await client.setName('overseer');
    return new Overseer(client);
  }

  /** Bumps, acknowledges its own watcher, waits for tracked watchers, and reports who acked and who timed out. */
  async bumpAndWait(options: BumpAndWaitOptions): Promise<BumpAndWaitResult> {
    const timeoutMs = options.watcherTimeoutMs;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
      throw new InvalidArgumentError(
        'watcherTimeoutMs',
        `watcherTimeoutMs ${timeoutMs} must be an integer number of ms (0 = wait forever)`,
      );
    }
    const start = performance.now();
    let { generation } = await this.client.bump(options.min ?? 0);
    let timedOut = false;
    for (;;) {
      await this.client.acknowledge(generation);
      const left = timeoutMs === 0 ? 0 : Math.max(1, Math.ceil(timeoutMs - (performance.now() - start)));
      try {
        await this.client.waitWatchers(left);
        break;
      } catch (err) {
        const errno = errnoOf(err);
        if (errno === 'ETIME') {
          timedOut = true;
          break;
        }
        if (errno !== 'EINTR') throw err;
        // Bumped again by someone else while waiting: take the newer generation.
        generation = await this.client.read({ nonBlocking: true });
      }
    }
    const timeToAvailableMs = performance.now() - start;
    const table = await this.client.listWatchers();
    const tracked = table.watchers.filter((w) => w.tracked);
    const acked = tracked.filter((w) => !w.outdated && w.acknowledged && w.generation === table.generation);
    const timedOutWatchers = tracked.filter((w) => w.outdated);
    return {
      generation: table.generation,
      watchersAcked: acked.length,
      watchersTimedOut: timedOutWatchers.length,
      timeToAvailableMs,
      timedOut,
      acked,
      timedOutWatchers,
    };
  }

  close(): Promise<void> {
    return this.client.close();
  }
}

/** One-shot: connects, runs Overseer.bumpAndWait, disconnects. */
export async function bumpAndWait(
  socketPath: string,
  options: BumpAndWaitOptions,
): Promise<BumpAndWaitResult> {
  const overseer = await Overseer.connect(socketPath);
  try {
    return await overseer.bumpAndWait(options);
  } finally {
    await overseer.close();
  }
}
