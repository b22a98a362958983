/**
 * The two reads of a migration round (docs/design.md §3 rule 2): harvest (and
 * clear) the dirty log, THEN sync the c-bit state, so the c-bits used are
 * at least as fresh as the dirty bits; cbit-first swaps them (its race).
 * Each read costs what a whole-guest bitmap copy costs on a real host
 * (src/vmm/sim/read-cost.ts), during which the vCPUs run on.
 */
import { PageBitmap } from '../common/page-bitmap.js';
import type { SyncResult } from '../host/cbit-store.js';
import type { SourceGuest } from '../vmm/backend.js';
import { DEFAULT_READ_COST_NS_PER_PAGE, modelReadCost } from '../vmm/sim/read-cost.js';
import type { MigrationLog } from './migration-log.js';
import type { Protocol } from './stream.js';
import type { Tracker } from './tracker.js';

export interface RoundReadResult {
  dirty: PageBitmap;
  sync: SyncResult;
  /** Time of both reads. */
  readsMs: number;
}

export class RoundReads {
  /** Sees every harvest (the verification reference notes what was written). */
  onHarvest: ((dirty: PageBitmap) => void) | undefined;
  private readonly nsPerPage: number;

  constructor(
    private readonly guest: SourceGuest,
    private readonly store: Tracker,
    private readonly vm: number,
    private readonly protocol: Protocol,
    nsPerPage: number | undefined,
    private readonly log: MigrationLog | undefined,
  ) {
    this.nsPerPage = nsPerPage ?? DEFAULT_READ_COST_NS_PER_PAGE;
  }

  /** Harvests (and clears) the dirty log into a fresh bitmap, at the cost of KVM_GET_DIRTY_LOG. */
  harvest(round: number): PageBitmap {
    const npages = this.guest.memory.npages;
    const d = new PageBitmap(npages);
    this.guest.memory.harvestDirty(d);
    modelReadCost(npages, this.nsPerPage);
    this.onHarvest?.(d);
    this.log?.harvest(round, d.runs());
    return d;
  }

  /**
   * Reads the c-bit state: drains every vCPU's exit ring into the tracker
   * first (rule: a sync drains every ring), then syncs (the store commits
   * what it consumed before it answers), at the modelled cost of copying
   * the state out.
   */
  async sync(round: number): Promise<SyncResult> {
    await this.guest.drainExits();
    const s = await this.store.sync(this.vm);
    modelReadCost(this.guest.memory.npages, this.nsPerPage);
    this.log?.sync(round, s);
    return s;
  }

  /** Both reads of a live round, in the protocol's order. */
  async both(round: number): Promise<RoundReadResult> {
    const t0 = performance.now();
    let dirty: PageBitmap;
    let sync: SyncResult;
    if (this.protocol === 'cbit-first') {
      sync = await this.sync(round);
      this.guest.tick('between-reads', round);
      dirty = this.harvest(round);
    } else {
      dirty = this.harvest(round);
      this.guest.tick('between-reads', round);
      sync = await this.sync(round);
    }
    return { dirty, sync, readsMs: performance.now() - t0 };
  }
}
