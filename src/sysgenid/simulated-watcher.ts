/**
 * One simulated guest watcher: the kind of component sysgenid exists for. It
 * keeps a small random pool (think: a userspace RNG's state), and when told
 * of a new generation it reseeds the pool, so no two clones of a VM go on
 * drawing the same numbers, and only then acknowledges. A stuck watcher is
 * told like the others but never reseeds nor acknowledges: it holds the
 * overseer until the timeout, which is what it is for.
 *
 * Ordering rule: reseed BEFORE acknowledge. The acknowledgement is the
 * watcher's promise that nothing from the old generation is left.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { SysgenidClient } from './client.js';

export interface WatcherSpec {
  name: string;
  /** Never acknowledges (to exercise the overseer's timeout). */
  stuck: boolean;
}

/** What a watcher did with one generation. */
export interface WatcherEvent {
  name: string;
  generation: number;
  /** Whether the pool was reseeded and the generation acknowledged (false for a stuck watcher). */
  acknowledged: boolean;
  /** First 8 bytes of SHA-256 of the pool after this generation, hex: a new value per reseed. */
  poolDigest: string;
}

export class SimulatedWatcher {
  private readonly pool: Buffer;
  private readonly loop: Promise<void>;

  private constructor(
    private readonly client: SysgenidClient,
    readonly spec: WatcherSpec,
    poolBytes: number,
    onEvent: (e: WatcherEvent) => void,
    onError: (err: Error) => void,
  ) {
    this.pool = randomFillSync(Buffer.alloc(poolBytes));
    this.loop = this.run(onEvent).catch(onError);
  }

  /** Connects, names and tracks the watcher; resolves once the service counts it. */
  static async start(
    socketPath: string,
    spec: WatcherSpec,
    options: { poolBytes: number; onEvent: (e: WatcherEvent) => void; onError: (err: Error) => void },
  ): Promise<SimulatedWatcher> {
    const client = await SysgenidClient.connect(socketPath);
    try {
      await client.setName(spec.name);
      await client.setTracking(true);
    } catch (err) {
      await client.close();
      throw err;
    }
    return new SimulatedWatcher(client, spec, options.poolBytes, options.onEvent, options.onError);
  }

  /** Disconnects (the service drops it from the outdated count) and waits for its loop to end. */
  async stop(): Promise<void> {
    await this.client.close();
    await this.loop;
  }

  private digest(): string {
    return createHash('sha256').update(this.pool).digest('hex').slice(0, 16);
  }

  private async run(onEvent: (e: WatcherEvent) => void): Promise<void> {
    for await (const generation of this.client.generations()) {
      if (this.spec.stuck) {
        onEvent({ name: this.spec.name, generation, acknowledged: false, poolDigest: this.digest() });
        return; // told, and never answers: the connection stays open until stop()
      }
      randomFillSync(this.pool);
      await this.client.acknowledge(generation);
      onEvent({ name: this.spec.name, generation, acknowledged: true, poolDigest: this.digest() });
    }
  }
}

/**
 * Starts watchers at most `batch` connections at a time: a burst of
 * simultaneous connects overflows the listen backlog of a Unix socket, which
 * the kernel answers with EAGAIN instead of queueing.
 */
export async function startInBatches(
  specs: readonly WatcherSpec[],
  start: (spec: WatcherSpec) => Promise<SimulatedWatcher>,
  batch = 64,
): Promise<SimulatedWatcher[]> {
  const out: SimulatedWatcher[] = [];
  try {
    for (let i = 0; i < specs.length; i += batch) {
      out.push(...(await Promise.all(specs.slice(i, i + batch).map(start))));
    }
  } catch (err) {
    await Promise.all(out.map((w) => w.stop()));
    throw err;
  }
  return out;
}
