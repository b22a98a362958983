/**
 * The sysgenid of one simulated guest, in one handle: a service on a private
 * socket and counter file, and a fleet of tracked simulated watchers. This is
 * what the migration wiring needs (docs/sysgenid.md, "The overseer"): start
 * it with the guest, let it run through the migration, and on resume at the
 * destination call `resume()`, which bumps the generation and keeps the VM
 * quiesced until every tracked watcher acknowledged or the timeout passed.
 *
 * Ordering rule: start() resolves only once every watcher is tracked, so a
 * resume() after it counts all of them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BumpAndWaitResult, Overseer } from './overseer.js';
import { SysgenidService } from './service.js';
import { startWatchers, type WatcherFleet } from './watchers.js';

export interface GuestSysgenidOptions {
  /** Tracked simulated watchers in the guest. */
  watchers: number;
  /** How many of them never acknowledge; default 0. */
  stuck?: number;
  /** Worker threads for the watchers (0 = this thread); default 1. */
  threads?: number;
  /** Directory for the socket and counter file; default a fresh one under the OS temp dir, removed by close(). */
  dir?: string;
}

export class GuestSysgenid {
  private constructor(
    readonly service: SysgenidService,
    readonly fleet: WatcherFleet,
    readonly socketPath: string,
    private readonly ownedDir: string | undefined,
  ) {}

  /** Starts the service and the watchers; resolves once every watcher is tracked. */
  static async start(options: GuestSysgenidOptions): Promise<GuestSysgenid> {
    const ownedDir =
      options.dir === undefined ? mkdtempSync(join(tmpdir(), 'sevtrack-sysgenid-')) : undefined;
    const dir = options.dir ?? (ownedDir as string);
    const socketPath = join(dir, 'sysgenid.sock');
    let service: SysgenidService | undefined;
    try {
      service = await SysgenidService.start({ socketPath, counterFile: join(dir, 'sysgenid') });
      const fleet = await startWatchers(options.watchers, {
        socketPath,
        stuck: options.stuck ?? 0,
        threads: options.threads ?? 1,
      });
      return new GuestSysgenid(service, fleet, socketPath, ownedDir);
    } catch (err) {
      await service?.stop();
      if (ownedDir) rmSync(ownedDir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * The guest resumed: bump the generation (to at least `min`) and wait for
   * the tracked watchers up to watcherTimeoutMs (0 = forever). Resolves with
   * who acknowledged, who timed out and how long the VM stayed unavailable.
   */
  async resume(options: { watcherTimeoutMs: number; min?: number }): Promise<BumpAndWaitResult> {
    const overseer = await Overseer.connect(this.socketPath);
    try {
      return await overseer.bumpAndWait(options);
    } finally {
      await overseer.close();
    }
  }

  /** Stops the watchers and the service, and removes the directory it created. */
  async close(): Promise<void> {
    await this.fleet.close();
    await this.service.stop();
    if (this.ownedDir) rmSync(this.ownedDir, { recursive: true, force: true });
  }
}
