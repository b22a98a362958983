/**
 * One run of the model: a World, the migration thread of one protocol
 * variant, and the guest contract. It lists the steps enabled now (the
 * choice points of a schedule), applies one, and verifies the destination
 * once the thread is done.
 *
 * Guest contract (docs/design.md rule 5):
 * - kept: nobody writes a page between its table step and the return of its
 *   notification, and the VMM pauses vCPUs only at clean points (between two
 *   guest operations, as the sim backend's vCPUs park), so no conversion is
 *   half done at pause.
 * - broken: another vCPU may write the page under its new c-bit while the
 *   converting vCPU's notification is still in flight, and the pause may
 *   land anywhere, a notification still in flight included.
 * A page is converted by one vCPU at a time under both.
 */
import { InvalidArgumentError } from '../common/errors.js';
import type { Protocol, VerifyMode } from '../migration/stream.js';
import { MigrationThread } from './protocol.js';
import { guestRead, sameBytes, type Term } from './sev-model.js';
import { ARRIVED, IDLE, IN_FLIGHT, World } from './world.js';

export const CONTRACTS = ['kept', 'broken'] as const;
export type Contract = (typeof CONTRACTS)[number];

export interface ModelConfig {
  protocol: Protocol;
  contract: Contract;
  vcpus: number;
  npages: number;
  /** Guest operations (a conversion or a write) each vCPU may do. */
  opsPerVcpu: number;
  /** Live rounds (round 0 included) at most before the pause is forced. */
  maxRounds: number;
}

/**
 * One choice of a schedule. `host` is the migration thread's next event;
 * `round` and `pause` are its choice after a live round; the rest are one
 * vCPU's events. Steps are interned (see StepTable): compare them by identity.
 */
export type Step =
  | { readonly kind: 'host' | 'round' | 'pause' }
  | { readonly kind: 'convert' | 'write'; readonly vcpu: number; readonly gfn: number }
  | { readonly kind: 'arrive' | 'return'; readonly vcpu: number };

export type GuestStep = Exclude<Step, { kind: 'host' | 'round' | 'pause' }>;

export function isGuestStep(s: Step): s is GuestStep {
  return 'vcpu' in s;
}

/** Every step of a model size, created once, so enabled-step lists allocate nothing. */
export class StepTable {
  readonly host: Step = { kind: 'host' };
  readonly round: Step = { kind: 'round' };
  readonly pause: Step = { kind: 'pause' };
  readonly convert: Step[][];
  readonly write: Step[][];
  readonly arrive: Step[];
  readonly ret: Step[];

  constructor(vcpus: number, npages: number) {
    const per = (kind: 'convert' | 'write') =>
      Array.from({ length: vcpus }, (_, vcpu) =>
        Array.from({ length: npages }, (_, gfn) => ({ kind, vcpu, gfn }) as Step),
      );
    this.convert = per('convert');
    this.write = per('write');
    this.arrive = Array.from({ length: vcpus }, (_, vcpu) => ({ kind: 'arrive', vcpu }) as Step);
    this.ret = Array.from({ length: vcpus }, (_, vcpu) => ({ kind: 'return', vcpu }) as Step);
  }

  /** The interned step equal to `s` (for schedules built or edited outside the table). */
  intern(s: Step): Step {
    if (!isGuestStep(s)) return this[s.kind];
    if (s.kind === 'arrive') return this.arrive[s.vcpu];
    if (s.kind === 'return') return this.ret[s.vcpu];
    return this[s.kind][s.vcpu][(s as { gfn: number }).gfn];
  }
}

export interface PageVerdict {
  gfn: number;
  /** What the source guest read at pause and the destination guest reads now. */
  source: Term;
  destination: Term | null;
  encrypted: boolean;
}

/** Checks a ModelConfig; throws InvalidArgumentError naming the field. */
export function checkConfig(c: ModelConfig): void {
  const range = (field: string, v: number, min: number, max: number) => {
    if (!Number.isInteger(v) || v < min || v > max)
      throw new InvalidArgumentError(field, `${field} ${v} must be an integer from ${min} to ${max}`);
  };
  range('vcpus', c.vcpus, 1, 4);
  range('pages', c.npages, 1, 8);
  range('opsPerVcpu', c.opsPerVcpu, 0, 16);
  range('maxRounds', c.maxRounds, 1, 16);
  if (c.contract === 'broken' && c.vcpus < 2)
    throw new InvalidArgumentError(
      'contract',
      'the broken contract needs 2 or more vCPUs (one writes while another notifies); raise vcpus',
    );
}

export class Model {
  world: World;
  thread: MigrationThread;

  constructor(
    readonly config: ModelConfig,
    readonly steps: StepTable = new StepTable(config.vcpus, config.npages),
  ) {
    this.world = new World(config.npages, config.vcpus, config.opsPerVcpu);
    this.thread = new MigrationThread(config.protocol, config.maxRounds);
  }

  clone(): Model {
    const m = Object.create(Model.prototype) as Model;
    Object.assign(m, this);
    m.world = this.world.clone();
    m.thread = this.thread.clone();
    return m;
  }

  get done(): boolean {
    return this.thread.phase === 'done';
  }

  /** Whether the pause may land now: anywhere on the broken contract, at clean points on the kept one. */
  private pauseAllowed(): boolean {
    return this.config.contract === 'broken' || !this.world.anyConverting();
  }

  /** Whether vCPU `v` may write `gfn` now (rule 5, as the contract says). */
  private mayWrite(v: number, gfn: number): boolean {
    const c = this.world.converter(gfn);
    return c < 0 || (this.config.contract === 'broken' && c !== v);
  }

  /** Fills `out` with the steps enabled now (host first, then vCPUs in order); returns it. */
  enabled(out: Step[]): Step[] {
    out.length = 0;
    const t = this.thread;
    const w = this.world;
    const s = this.steps;
    if (t.phase === 'decide') {
      if (this.pauseAllowed()) out.push(s.pause);
      if (t.canStartRound()) out.push(s.round);
    } else if (t.phase !== 'done') {
      out.push(s.host);
    }
    if (w.paused) return out;
    for (let v = 0; v < w.vcpus; v++) this.vcpuSteps(v, out);
    return out;
  }

  /** Appends vCPU v's enabled steps. */
  vcpuSteps(v: number, out: Step[]): void {
    const w = this.world;
    const s = this.steps;
    if (w.phase[v] === IN_FLIGHT) out.push(s.arrive[v]);
    else if (w.phase[v] === ARRIVED) out.push(s.ret[v]);
    else if (w.opsLeft[v] > 0) {
      for (let g = 0; g < w.npages; g++) if (w.converter(g) < 0) out.push(s.convert[v][g]);
      for (let g = 0; g < w.npages; g++) if (this.mayWrite(v, g)) out.push(s.write[v][g]);
    }
  }

  /** Whether `step` may be taken now. */
  isEnabled(step: Step): boolean {
    const t = this.thread;
    const w = this.world;
    switch (step.kind) {
      case 'host':
        return t.phase !== 'decide' && t.phase !== 'done';
      case 'pause':
        return t.phase === 'decide' && this.pauseAllowed();
      case 'round':
        return t.canStartRound();
      case 'arrive':
        return !w.paused && w.phase[step.vcpu] === IN_FLIGHT;
      case 'return':
        return !w.paused && w.phase[step.vcpu] === ARRIVED;
      case 'convert':
        return (
          !w.paused && w.phase[step.vcpu] === IDLE && w.opsLeft[step.vcpu] > 0 && w.converter(step.gfn) < 0
        );
      case 'write':
        return (
          !w.paused &&
          w.phase[step.vcpu] === IDLE &&
          w.opsLeft[step.vcpu] > 0 &&
          this.mayWrite(step.vcpu, step.gfn)
        );
    }
  }

  /** Takes `step`; the caller has checked that it is enabled. */
  apply(step: Step): void {
    const w = this.world;
    switch (step.kind) {
      case 'host':
        this.thread.step(w);
        break;
      case 'pause':
        this.thread.pause(w);
        break;
      case 'round':
        this.thread.nextRound();
        break;
      case 'convert':
        w.convertTable(step.vcpu, step.gfn);
        break;
      case 'arrive':
        w.arrive(step.vcpu);
        break;
      case 'return':
        w.ret(step.vcpu);
        break;
      case 'write':
        w.write(step.vcpu, step.gfn);
        break;
    }
  }

  /**
   * The pages the destination guest reads differently from the source guest
   * at pause: all of them under `strict`, those written since their last
   * conversion under `defined`. Call once the thread is done.
   */
  corrupted(mode: VerifyMode): PageVerdict[] {
    const w = this.world;
    const out: PageVerdict[] = [];
    for (let g = 0; g < w.npages; g++) {
      if (mode === 'defined' && w.pauseDefined![g] === 0) continue;
      const encrypted = w.table[g] === 1;
      const source = w.pauseView![g];
      const raw = w.dest[g];
      const destination = raw ? guestRead('destination', encrypted, raw) : null;
      if (!destination || !sameBytes(source, destination))
        out.push({ gfn: g, source, destination, encrypted });
    }
    return out;
  }

  /** Whether any page is corrupted under `mode` (the hot path's cheaper form of corrupted()). */
  isCorrupted(mode: VerifyMode): boolean {
    const w = this.world;
    for (let g = 0; g < w.npages; g++) {
      if (mode === 'defined' && w.pauseDefined![g] === 0) continue;
      const raw = w.dest[g];
      if (!raw || !sameBytes(w.pauseView![g], guestRead('destination', w.table[g] === 1, raw))) return true;
    }
    return false;
  }

  key(): string {
    return `${this.world.key()}#${this.thread.key()}`;
  }
}
