/**
 * What each protocol variant's migration thread does, step by step, as one
 * module: PLANS says it declaratively (which read first, whether a c-bit
 * change alone puts a page in the send set, which perspective a round
 * sends with), MigrationThread carries it out one host event at a time
 * against a World. It mirrors src/migration/source.ts round for round:
 *
 *   round 0      harvest, then sync; send every page from that sync's state
 *                (every variant; naive keeps that state for good).
 *   round k ≥ 1  the two reads in the variant's order; send the dirty pages,
 *                plus the c-bit-changed ones where rule 3 applies, each from
 *                the round's perspective.
 *   decide       after a live round the scheduler chooses: another round, or
 *                pause (only at a clean point unless the guest breaks rule 5).
 *   final        with the guest paused, in one step: the variant's reads,
 *                the pause-time diff where rule 4 applies, the sends, then
 *                the full c-bit state.
 *
 * A replay of a recorded migration drives the same thread with the
 * recorded guest events in between (see docs/explore.md).
 */
import { InvariantError } from '../common/errors.js';
import type { Protocol } from '../migration/stream.js';
import type { SendReason, SyncResult, World } from './world.js';

/** How one round reads the two logs and builds its send set. */
export interface RoundPlan {
  /** Reads in order; `harvest` alone means the c-bit state is not read again. */
  reads: readonly ('harvest' | 'sync')[];
  /** Rule 3 (live) or rule 4 (paused): a page whose c-bit changed since the last sync is sent. */
  resendChanged: boolean;
  /** Whose state the pages are sent with. */
  perspective: 'this-sync' | 'last-live-sync' | 'initial';
}

export interface ProtocolPlan {
  live: RoundPlan;
  final: RoundPlan;
}

const HARVEST_THEN_SYNC = ['harvest', 'sync'] as const;

/** docs/design.md §3, the five variants; src/migration/source.ts does the same with real pages. */
export const PLANS: Record<Protocol, ProtocolPlan> = {
  safe: {
    live: { reads: HARVEST_THEN_SYNC, resendChanged: true, perspective: 'this-sync' },
    final: { reads: HARVEST_THEN_SYNC, resendChanged: true, perspective: 'this-sync' },
  },
  'no-cbit-dirty': {
    live: { reads: HARVEST_THEN_SYNC, resendChanged: false, perspective: 'this-sync' },
    final: { reads: HARVEST_THEN_SYNC, resendChanged: false, perspective: 'this-sync' },
  },
  'cbit-first': {
    live: { reads: ['sync', 'harvest'], resendChanged: false, perspective: 'this-sync' },
    final: { reads: ['sync', 'harvest'], resendChanged: true, perspective: 'this-sync' },
  },
  'no-final-diff': {
    live: { reads: HARVEST_THEN_SYNC, resendChanged: true, perspective: 'this-sync' },
    final: { reads: ['harvest'], resendChanged: false, perspective: 'last-live-sync' },
  },
  naive: {
    live: { reads: HARVEST_THEN_SYNC, resendChanged: false, perspective: 'initial' },
    final: { reads: ['harvest'], resendChanged: false, perspective: 'initial' },
  },
};

/** Round 0 of the model: every page, from the state of a sync taken after the harvest. */
export const FIRST_ROUND: RoundPlan = {
  reads: HARVEST_THEN_SYNC,
  resendChanged: false,
  perspective: 'this-sync',
};

/** Where the thread is: reading (index into the round's reads), sending, deciding, or done. */
export type ThreadPhase = 'read' | 'send' | 'decide' | 'final' | 'done';

export class MigrationThread {
  readonly plan: ProtocolPlan;
  round = 0;
  phase: ThreadPhase = 'read';
  /** Index of the next read of this round. */
  private readIndex = 0;
  private harvested: Uint8Array | null = null;
  private synced: SyncResult | null = null;
  private sendList: number[] = [];
  private sendReasons: SendReason[] = [];
  private sendIndex = 0;
  private perspective: Uint8Array | null = null;
  private initial: Uint8Array | null = null;
  private lastLive: Uint8Array | null = null;

  /**
   * `maxRounds` live rounds at most (round 0 included) before the pause is
   * forced. `firstRound` is round 0's plan (a replay passes the engine's,
   * whose cbit-first reads the c-bits first in round 0 too).
   */
  constructor(
    readonly protocol: Protocol,
    readonly maxRounds: number,
    private readonly firstRound: RoundPlan = FIRST_ROUND,
  ) {
    this.plan = PLANS[protocol];
  }

  clone(): MigrationThread {
    const t = Object.create(MigrationThread.prototype) as MigrationThread;
    Object.assign(t, this);
    // Arrays are replaced, never mutated in place, except the send list's index.
    return t;
  }

  private roundPlan(): RoundPlan {
    return this.round === 0 ? this.firstRound : this.plan.live;
  }

  /** Whether another live round may start instead of the pause. */
  canStartRound(): boolean {
    return this.phase === 'decide' && this.round + 1 < this.maxRounds;
  }

  /** One host event: the next read or the next page of the round (or the whole paused round). */
  step(world: World): void {
    if (this.phase === 'read') {
      const plan = this.roundPlan();
      this.read(world, plan.reads[this.readIndex++]);
      if (this.readIndex === plan.reads.length) this.buildSendSet(world, plan, false);
    } else if (this.phase === 'send') {
      const gfn = this.sendList[this.sendIndex];
      world.send(this.round, gfn, this.perspective![gfn] === 1, this.sendReasons[this.sendIndex]);
      this.sendIndex++;
      if (this.sendIndex === this.sendList.length) this.phase = 'decide';
    } else if (this.phase === 'final') {
      this.finalRound(world);
    } else {
      throw new InvariantError(`the migration thread cannot step while in phase ${this.phase}`);
    }
  }

  /** After a live round: start the next one. */
  nextRound(): void {
    this.round++;
    this.readIndex = 0;
    this.phase = 'read';
  }

  /** After a live round: pause the guest; the final round follows as one step. */
  pause(world: World): void {
    this.round++;
    world.pause(this.round);
    this.phase = 'final';
  }

  private read(world: World, what: 'harvest' | 'sync'): void {
    if (what === 'harvest') this.harvested = world.harvest(this.round);
    else this.synced = world.sync(this.round);
  }

  /** Builds the round's send set from its reads (rules 2-4 as the plan says). */
  private buildSendSet(world: World, plan: RoundPlan, paused: boolean): void {
    const n = world.npages;
    const sync = plan.reads.includes('sync') ? this.synced! : null;
    if (this.round === 0) {
      this.initial = sync!.state;
      this.lastLive = sync!.state;
    } else if (sync && !paused) {
      this.lastLive = sync.state;
    }
    this.perspective =
      plan.perspective === 'initial'
        ? this.initial
        : plan.perspective === 'last-live-sync'
          ? this.lastLive
          : sync!.state;
    const changed = new Uint8Array(n);
    if (plan.resendChanged && sync) for (const g of sync.delta) changed[g] = 1;
    this.sendList = [];
    this.sendReasons = [];
    for (let g = 0; g < n; g++) {
      const dirty = this.harvested![g] === 1;
      if (this.round === 0) this.push(g, 'first round');
      else if (dirty && changed[g]) this.push(g, 'dirty, c-bit changed');
      else if (dirty) this.push(g, 'dirty');
      else if (changed[g]) this.push(g, 'c-bit changed');
    }
    this.sendIndex = 0;
    // What the reads returned is used up; forgetting it lets equal futures compare equal.
    this.harvested = null;
    this.synced = null;
    this.phase = this.sendList.length > 0 ? 'send' : 'decide';
  }

  private push(gfn: number, why: SendReason): void {
    this.sendList.push(gfn);
    this.sendReasons.push(why);
  }

  private finalRound(world: World): void {
    const plan = this.plan.final;
    for (const r of plan.reads) this.read(world, r);
    this.buildSendSet(world, plan, true);
    while (this.phase === 'send') this.step(world);
    world.cbitState(this.round, this.perspective!);
    this.phase = 'done';
  }

  /** A string equal for two threads that act alike from here on (for the exhaustive search). */
  key(): string {
    const bits = (a: Uint8Array | null) => (a ? a.join('') : '-');
    return `${this.phase}${this.readIndex}:${this.maxRounds - this.round}${this.round === 0 ? 'f' : ''}|${bits(this.harvested)}|${this.synced ? `${this.synced.delta.join(',')}/${bits(this.synced.state)}` : '-'}|${this.sendList.slice(this.sendIndex).join(',')}|${bits(this.perspective)}|${bits(this.initial)}|${bits(this.lastLive)}`;
  }
}
