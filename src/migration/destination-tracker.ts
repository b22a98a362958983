/**
 * The destination's own tracker (docs/design.md, "the guest runs on after
 * resume"): a CbitStore (SQLite) holding the migrated VM. While pages
 * arrive it records the perspective each arrived with (sealed through the
 * PSP = private, raw = shared) as changes of the VM's state, committed once
 * per round; at the end it applies the final c-bit state the source sends
 * and checks, before the guest may resume:
 *
 * - every page the guest wrote after its last conversion (the source's
 *   `defined` bitmap: such a page was dirtied after the conversion, so it was
 *   sent after it) arrived last from the perspective the final state gives
 *   it; a page that did not was sent from a stale c-bit, a protocol error;
 * - the final state equals the guest's own c-bit table, found in the
 *   migrated memory (the guest reported every change before pausing).
 *
 * After resume its database is the authoritative state of the VM: the
 * resumed guest's exits go into it, and a migration onward reads it.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../common/errors.js';
import { PageBitmap } from '../common/page-bitmap.js';
import { gfnsToRuns } from '../common/ranges.js';
import { CbitStore } from '../host/cbit-store.js';
import type { PageStateMap } from '../host/page-state-map.js';

/** The migrated VM's id in the destination's database. */
export const DESTINATION_VM = 1;

export interface TrackerCheck {
  /** Pages written after their last conversion whose last arrival's perspective differs from the final state. */
  perspectiveMismatchGfns: number[];
  /** Pages whose final c-bit state differs from the guest's own table. */
  trackerMismatchGfns: number[];
}

export class DestinationTracker {
  /** The perspective each page last arrived with (1 = sealed, private). */
  private arrived: PageBitmap | undefined;
  private npages = 0;

  /** Whether a guest was announced (begin): from then on a named database is the run's record. */
  private begun = false;

  private constructor(
    readonly store: CbitStore,
    private readonly ownedDir: string | undefined,
    /** The named database, when this open created it: removed again if no guest ever came. */
    private readonly createdPath: string | undefined,
  ) {}

  /**
   * Opens the tracker's database: `path` (created if missing; it must not
   * hold the VM already) or a temporary one removed by close().
   */
  static open(path?: string): DestinationTracker {
    const ownedDir = path === undefined ? mkdtempSync(join(tmpdir(), 'sevtrack-dst-')) : undefined;
    const createdPath = path !== undefined && !existsSync(path) ? path : undefined;
    const store = CbitStore.open(path ?? join(ownedDir as string, 'destination.db'), {
      synchronous: 'NORMAL',
    });
    if (store.hasVm(DESTINATION_VM)) {
      store.close();
      throw new InvalidArgumentError(
        '--db',
        `${path} already holds vm ${DESTINATION_VM} (a guest migrated here before); choose a new --db file`,
      );
    }
    return new DestinationTracker(store, ownedDir, createdPath);
  }

  /**
   * For a destination that listens before its source connects: opens the
   * tracker of `path` first (a database it cannot use is refused before
   * anything listens), then runs `body`. `handOver()` gives the tracker to
   * the run, which closes it from then on; if `body` ends (returns or
   * throws) without handing it over, the tracker is closed here.
   */
  static async whileListening<T>(
    path: string | undefined,
    body: (handOver: () => DestinationTracker) => Promise<T>,
  ): Promise<T> {
    const tracker = DestinationTracker.open(path);
    let handed = false;
    try {
      return await body(() => {
        handed = true;
        return tracker;
      });
    } finally {
      if (!handed) tracker.close();
    }
  }

  /** HELLO: registers the VM (npages, every page private until a page says otherwise). */
  begin(npages: number): void {
    this.begun = true;
    this.store.registerVm(DESTINATION_VM, npages);
    this.arrived = new PageBitmap(npages);
    this.arrived.setRange(0, npages);
    this.npages = npages;
  }

  /** A batch of pages arrived from one perspective; consecutive gfns become one change. */
  recordArrival(gfns: Float64Array, encrypted: boolean): void {
    const arrived = this.arrived!;
    for (const { gfn, npages } of gfnsToRuns(gfns)) {
      if (encrypted) arrived.setRange(gfn, npages);
      else arrived.clearRange(gfn, npages);
      this.store.applyChange(DESTINATION_VM, { gfn, npages, encrypted });
    }
  }

  /** A round ended: what arrived in it is durable. */
  endRound(): void {
    this.store.commit();
  }

  /**
   * Compares what arrived with the final state and the guest's own table
   * (see the header); changes nothing.
   */
  check(final: PageStateMap, defined: PageBitmap, guestTable: PageBitmap): TrackerCheck {
    const finalBits = final.encryptedBitmap();
    // Pages that arrived from the other perspective than the final state
    // and hold defined content: (arrived ^ final) & defined, in bitmap words.
    // Undefined ones (converted and not written since) may differ: a guest
    // converts hundreds of thousands of them, too many to test one by one
    // while the guest is paused (8-11 ms at 2 GiB mixed).
    const differing = this.arrived!.clone().xor(finalBits);
    differing.andNot(differing.clone().andNot(defined));
    const perspectiveMismatchGfns: number[] = [];
    for (const run of differing.runs())
      for (let g = run.gfn; g < run.gfn + run.npages; g++) perspectiveMismatchGfns.push(g);
    const trackerMismatchGfns: number[] = [];
    for (const run of finalBits.xor(guestTable).runs())
      for (let g = run.gfn; g < run.gfn + run.npages; g++) trackerMismatchGfns.push(g);
    return { perspectiveMismatchGfns, trackerMismatchGfns };
  }

  /**
   * Applies the final c-bit state and the migrated migration-control MSR:
   * from here the database holds exactly the state the source's tracker had.
   */
  applyFinal(final: PageStateMap, migrationControl: bigint): void {
    for (const d of this.store.state(DESTINATION_VM).diff(final)) this.store.applyChange(DESTINATION_VM, d);
    this.store.commit();
    this.store.setMigrationControl(DESTINATION_VM, migrationControl);
  }

  /** The migration failed before resume: the VM is forgotten (its partial state discarded). */
  discard(): void {
    if (this.store.hasVm(DESTINATION_VM)) this.store.unregisterVm(DESTINATION_VM);
  }

  /**
   * Closes the database. A temporary one is removed; so is a named one this
   * open created if no source ever announced a guest (a destination that
   * failed or was cancelled before its source came leaves nothing behind).
   */
  close(): void {
    this.store.close();
    if (this.ownedDir) rmSync(this.ownedDir, { recursive: true, force: true });
    if (this.createdPath && !this.begun)
      for (const suffix of ['', '-wal', '-shm']) rmSync(`${this.createdPath}${suffix}`, { force: true });
  }
}
