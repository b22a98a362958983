/**
 * A schedule as people read it: one line per event, then the verdict for
 * every page that arrived wrong, with what the two guests read and how the
 * page was last sent.
 */
import { InvalidArgumentError } from '../common/errors.js';
import type { VerifyMode } from '../migration/stream.js';
import type { ModelConfig, PageVerdict, Step } from './model.js';
import { replaySchedule } from './schedule.js';
import { termText } from './sev-model.js';
import { type ModelEvent, World } from './world.js';

const cbit = (encrypted: boolean) => (encrypted ? 'encrypted' : 'shared');
const gfnList = (gfns: readonly number[], none: string) =>
  gfns.length === 0 ? none : `gfn ${gfns.join(', ')}`;

export function describeEvent(e: ModelEvent, pausedRound: number): string {
  const host = (round: number) => `host round ${round}${round === pausedRound ? ' (paused)' : ''}:`;
  switch (e.kind) {
    case 'convert':
      return `vCPU${e.vcpu} converts gfn ${e.gfn} to ${cbit(e.encrypted)} (its c-bit table); notification in flight`;
    case 'arrive':
      return `vCPU${e.vcpu}'s notification for gfn ${e.gfn} reaches the host tracker (seq ${e.seq})`;
    case 'return':
      return `vCPU${e.vcpu}'s notification for gfn ${e.gfn} returns`;
    case 'write':
      return `vCPU${e.vcpu} writes d${e.data} to gfn ${e.gfn} as ${cbit(e.encrypted)}`;
    case 'harvest':
      return `${host(e.round)} harvests and clears the dirty log: ${gfnList(e.gfns, 'nothing dirty')}`;
    case 'sync':
      return `${host(e.round)} syncs the c-bit state up to seq ${e.seq}: ${gfnList(e.delta, 'no change')}${e.delta.length ? ' changed' : ''}`;
    case 'send':
      return `${host(e.round)} sends gfn ${e.gfn} (d${e.data}) as ${cbit(e.encrypted)} (${e.why})`;
    case 'pause':
      return `host pauses the guest after round ${e.round - 1}${e.inFlight.map((f) => `; vCPU${f.vcpu}'s notification for gfn ${f.gfn} is still in flight`).join('')}`;
    case 'cbit-state':
      return `${host(e.round)} sends the full c-bit state (encrypted: ${gfnList(e.encrypted, 'none')})`;
  }
}

/** Why a page arrived wrong, in one line. */
export function describeVerdict(v: PageVerdict, world: World): string {
  const sent =
    world.sentAs[v.gfn] < 0
      ? 'it was never sent'
      : `last sent in round ${world.sentRound[v.gfn]} holding d${world.sentData[v.gfn]} as ${cbit(world.sentAs[v.gfn] === 1)}`;
  const dest = v.destination ? termText(v.destination) : 'nothing';
  return `gfn ${v.gfn} CORRUPTED: at pause the guest (c-bit ${cbit(v.encrypted)}) read ${termText(v.source)}, the destination guest reads ${dest}; ${sent}`;
}

export interface Timeline {
  lines: string[];
  /** Events described (the lines between the initial state and the verdicts). */
  events: number;
  corrupted: PageVerdict[];
}

/** Replays `steps` on a fresh model and describes every event and every corrupted page under `mode`. */
export function renderTimeline(config: ModelConfig, steps: readonly Step[], mode: VerifyMode): Timeline {
  const events: ModelEvent[] = [];
  const start = new World(config.npages, config.vcpus, config.opsPerVcpu);
  const initial: string[] = [];
  for (let g = 0; g < config.npages; g++)
    initial.push(`gfn ${g} ${cbit(start.table[g] === 1)} holding d${start.current[g]}`);
  const run = replayWithEvents(config, steps, events);
  const pausedRound = events.find((e) => e.kind === 'pause')?.round ?? -1;
  const lines = [`initially: ${initial.join(', ')}; the host tracker agrees`];
  events.forEach((e, i) => {
    lines.push(`${String(i + 1).padStart(3)}. ${describeEvent(e, pausedRound)}`);
  });
  const corrupted = run.model.corrupted(mode);
  for (const v of corrupted) lines.push(describeVerdict(v, run.model.world));
  if (corrupted.length === 0) lines.push(`every page verifies (${mode})`);
  return { lines, events: events.length, corrupted };
}

function replayWithEvents(config: ModelConfig, steps: readonly Step[], events: ModelEvent[]) {
  const r = replaySchedule(config, steps, undefined, (m) => {
    m.world.onEvent = (e) => events.push(e);
  });
  if (!r)
    throw new InvalidArgumentError(
      'schedule',
      'the schedule does not replay: a step is not enabled where it stands',
    );
  return r;
}
