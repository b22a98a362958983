/**
 * What-if: re-runs a recorded migration's guest events under another
 * protocol variant, with the explorer's model (world.ts, protocol.ts)
 * rather than a second copy of the protocol (docs/explore.md, "How replay
 * plugs in"). The world starts from the tracker's state when the migration
 * began; the variant's MigrationThread reads where the recording read (its
 * i-th read of a round at the recorded round's i-th read) and pauses where
 * the recording paused; the guest's conversions and writes go in between.
 *
 * Placing the guest events. The log pins each one to an interval of host
 * reads, never to a point:
 *   - conversion seq c: after the last sync with seq < c, before the first
 *     with seq ≥ c (or before the pause);
 *   - a write of a page a harvest found dirty: after the previous harvest,
 *     before that one (one write stands for all of them: only the last
 *     matters);
 *   - written-at-pause: a page written since its last conversion had its
 *     last write after that conversion, and a page not written since had
 *     none after it.
 * Each event goes as LATE as its interval and these orders allow (and
 * conversions keep their seq order). Replaying the recorded variant then
 * repeats the recorded reads exactly; a race another variant would need
 * (cbit-first's: a conversion and a write between its two reads) appears
 * only where the log forces the events there, so a what-if never invents
 * a race the recording cannot show.
 */
import type { ConversionRow } from '../migration/log-schema.js';
import type { Protocol, VerifyMode } from '../migration/stream.js';
import { Model, StepTable } from './model.js';
import { FIRST_ROUND, MigrationThread, PLANS } from './protocol.js';
import type { Recording } from './replay-log.js';
import { data, guestWrite } from './sev-model.js';
import type { ModelEvent } from './world.js';

export interface WhatIfRound {
  round: number;
  paused: boolean;
  pagesSent: number;
  /** Pages sent only for a c-bit change (rule 3 or 4). */
  cbitResends: number;
}

export interface WhatIf {
  protocol: Protocol;
  verify: VerifyMode;
  outcome: 'clean' | 'corrupted';
  corrupted: number[];
  pagesSent: number;
  cbitResends: number;
  rounds: WhatIfRound[];
  /** Guest events the log's constraints could not place consistently (0 for a consistent log). */
  unplaced: number;
}

/** The pre-migration tracker state: round 0's state with the conversions before its sync undone. */
function startState(rec: Recording): Uint8Array {
  const s = rec.initial!.slice();
  for (let i = rec.conversions.length - 1; i >= 0; i--) {
    const c = rec.conversions[i];
    if (c.seq <= rec.initialSeq) s.fill(c.old_encrypted, c.gfn, c.gfn + c.npages);
  }
  return s;
}

interface Placement {
  /** Live reads (slot s is rec.reads[liveReads[s]]); slot `liveReads.length` is the pause. */
  liveReads: number[];
  convGap: Int32Array;
  /** Writes: page, gap, and whether it must precede its page's last conversion in the same gap. */
  writeGfn: Int32Array;
  writeGap: Int32Array;
  writeFirst: Uint8Array;
  unplaced: number;
}

/** Assigns every guest event a gap (before slot s) as the module comment says. */
function place(rec: Recording): Placement {
  const liveReads: number[] = [];
  for (let i = 0; i < rec.reads.length; i++) if (rec.reads[i].round < rec.pausedRound) liveReads.push(i);
  const pauseSlot = liveReads.length;
  const n = rec.npages;
  const convs = rec.conversions;
  // Conversion intervals from the live syncs.
  const syncSlots: { slot: number; seq: number }[] = [];
  liveReads.forEach((r, slot) => {
    if (rec.reads[r].kind === 'sync') syncSlots.push({ slot, seq: rec.reads[r].seq });
  });
  const lo = new Int32Array(convs.length);
  const hi = new Int32Array(convs.length);
  let k = 0;
  for (let i = 0; i < convs.length; i++) {
    while (k < syncSlots.length && syncSlots[k].seq < convs[i].seq) k++;
    lo[i] = k > 0 ? syncSlots[k - 1].slot + 1 : 0;
    hi[i] = k < syncSlots.length ? syncSlots[k].slot : pauseSlot;
  }
  // Writes: one per (page, harvest that found it), each harvest's window.
  const harvestSlots: number[] = [];
  liveReads.forEach((r, slot) => {
    if (rec.reads[r].kind === 'harvest') harvestSlots.push(slot);
  });
  const pausedHarvest = rec.reads.find((r) => r.kind === 'harvest' && r.round === rec.pausedRound);
  const windows = harvestSlots.map((slot, i) => ({
    index: rec.reads[liveReads[slot]].index,
    lo: i > 0 ? harvestSlots[i - 1] + 1 : 0,
    hi: slot,
  }));
  if (pausedHarvest)
    windows.push({
      index: pausedHarvest.index,
      lo: harvestSlots.length > 0 ? harvestSlots.at(-1)! + 1 : 0,
      hi: pauseSlot,
    });
  const lastWindow = new Int32Array(n).fill(-1);
  let nwrites = 0;
  windows.forEach((w, i) => {
    for (const r of rec.events[w.index].runs) {
      lastWindow.fill(i, r.gfn, r.gfn + r.npages);
      nwrites += r.npages;
    }
  });
  // Each page's last conversion row.
  const lastConv = new Int32Array(n).fill(-1);
  for (let i = 0; i < convs.length; i++) lastConv.fill(i, convs[i].gfn, convs[i].gfn + convs[i].npages);
  // Written since the last conversion: that conversion comes no later than the last write's gap.
  const ub = hi.slice();
  const written = rec.writtenAtPause!;
  for (let g = 0; g < n; g++) {
    const c = lastConv[g];
    if (c >= 0 && written[g] === 1 && lastWindow[g] >= 0) ub[c] = Math.min(ub[c], windows[lastWindow[g]].hi);
  }
  let unplaced = 0;
  const convGap = new Int32Array(convs.length);
  for (let i = convs.length - 1; i >= 0; i--) {
    if (i + 1 < convs.length) ub[i] = Math.min(ub[i], convGap[i + 1]);
    if (ub[i] < lo[i]) unplaced++;
    convGap[i] = Math.max(ub[i], lo[i]);
  }
  const writeGfn = new Int32Array(nwrites);
  const writeGap = new Int32Array(nwrites);
  const writeFirst = new Uint8Array(nwrites);
  let w = 0;
  windows.forEach((win, i) => {
    for (const r of rec.events[win.index].runs)
      for (let g = r.gfn; g < r.gfn + r.npages; g++) {
        let gap = win.hi;
        let first = 0;
        const c = lastConv[g];
        // Not written since its last conversion: its last write precedes it.
        if (c >= 0 && written[g] === 0 && lastWindow[g] === i && convGap[c] <= gap) {
          gap = convGap[c];
          first = 1;
          if (gap < win.lo) unplaced++;
        }
        writeGfn[w] = g;
        writeGap[w] = gap;
        writeFirst[w] = first;
        w++;
      }
  });
  return { liveReads, convGap, writeGfn, writeGap, writeFirst, unplaced };
}

/**
 * Re-runs the recording's guest events under `protocol` and verifies under
 * `verify`. Needs a log that reached its paused round (the caller checks).
 */
export function whatIf(rec: Recording, protocol: Protocol, verify: VerifyMode): WhatIf {
  const pl = place(rec);
  const vcpus = Math.max(1, rec.meta.vcpus);
  const liveRounds = rec.pausedRound;
  const model = new Model(
    { protocol, contract: 'kept', vcpus, npages: rec.npages, opsPerVcpu: 0, maxRounds: liveRounds },
    new StepTable(vcpus, 0),
  );
  // The engine's round 0 reads in the variant's live order (source.ts bulkRound).
  model.thread = new MigrationThread(protocol, liveRounds, {
    ...FIRST_ROUND,
    reads: PLANS[protocol].live.reads,
  });
  const world = model.world;
  const thread = model.thread;
  const start = startState(rec);
  world.table.set(start);
  world.hostState.set(start);
  world.synced.set(start);
  for (let g = 0; g < rec.npages; g++) world.raw[g] = guestWrite('source', start[g] === 1, data(g));

  const rounds: WhatIfRound[] = Array.from({ length: rec.pausedRound + 1 }, (_, round) => ({
    round,
    paused: round === rec.pausedRound,
    pagesSent: 0,
    cbitResends: 0,
  }));
  world.onEvent = (e: ModelEvent) => {
    if (e.kind !== 'send') return;
    const r = rounds[e.round];
    r.pagesSent++;
    if (e.why === 'c-bit changed') r.cbitResends++;
  };

  // Guest events by gap.
  const slots = pl.liveReads.length + 1;
  const convStart = new Int32Array(slots + 1);
  for (const gap of pl.convGap) convStart[gap + 1]++;
  for (let s = 0; s < slots; s++) convStart[s + 1] += convStart[s];
  const writeOrder = Array.from(pl.writeGap.keys()).sort((a, b) => pl.writeGap[a] - pl.writeGap[b]);
  let wi = 0;
  let ci = 0;
  const convert = (c: ConversionRow) => {
    const v = c.vcpu < vcpus ? c.vcpu : 0;
    for (let g = c.gfn; g < c.gfn + c.npages; g++) {
      if (world.table[g] !== c.encrypted) {
        world.convertTable(v, g);
        world.arrive(v);
        world.ret(v);
      } else {
        world.defined[g] = 0; // the guest re-set the state it had: the page still counts as converted
      }
    }
  };
  for (let s = 0; s < slots; s++) {
    const wEnd = (() => {
      let e = wi;
      while (e < writeOrder.length && pl.writeGap[writeOrder[e]] === s) e++;
      return e;
    })();
    for (let j = wi; j < wEnd; j++)
      if (pl.writeFirst[writeOrder[j]]) world.write(0, pl.writeGfn[writeOrder[j]]);
    for (; ci < convStart[s + 1]; ci++) convert(rec.conversions[ci]);
    for (let j = wi; j < wEnd; j++)
      if (!pl.writeFirst[writeOrder[j]]) world.write(0, pl.writeGfn[writeOrder[j]]);
    wi = wEnd;
    if (s < pl.liveReads.length) {
      const read = rec.reads[pl.liveReads[s]];
      if (thread.phase === 'decide' && read.round > thread.round) thread.nextRound();
      thread.step(world);
      while (thread.phase === 'send') thread.step(world);
    } else {
      // A page the guest's table has converted but the tracker never heard of: in flight at the pause.
      const guest = rec.guestAtPause!;
      for (let g = 0; g < rec.npages; g++) if (world.table[g] !== guest[g]) world.convertTable(0, g);
      thread.pause(world);
      thread.step(world);
    }
  }
  const corrupted = model.corrupted(verify).map((v) => v.gfn);
  return {
    protocol,
    verify,
    outcome: corrupted.length > 0 ? 'corrupted' : 'clean',
    corrupted,
    pagesSent: rounds.reduce((n, r) => n + r.pagesSent, 0),
    cbitResends: rounds.reduce((n, r) => n + r.cbitResends, 0),
    rounds,
    unplaced: pl.unplaced,
  };
}
