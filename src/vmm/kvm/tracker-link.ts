/**
 * Forwards a KVM guest's hypercall records to the c-bit tracker, one batch
 * at a time: every record of a batch is applied (CbitStore.applyHypercallAt
 * reads the raw record in place, no copy), then one commit makes the batch
 * durable. The native exit handler validated each call with the same rules
 * as the store; a disagreement is a bug and throws InvariantError.
 *
 * Ordering (docs/design.md §5): a change is queued natively before the
 * guest's call returns; `sync()` drains the queues first, so a sync sees every
 * change the guest was told is done.
 *
 * The guest's READY event (its write of KVM_MIGRATION_READY to
 * MSR_KVM_MIGRATION_CONTROL, reported as an event because `wrmsr` faults at
 * CPL3) sets the store's migration control, as the MSR exit does for sim.
 */
import { InvariantError } from '../../common/errors.js';
import { KVM_MIGRATION_READY } from '../../common/kvm-abi.js';
import type { CbitStore, SyncResult } from '../../host/cbit-store.js';
import type { ConversionTap, TrackedChange } from '../hypercall-backend.js';
import { GuestEvent } from './control-page.js';
import type { KvmGuest, RecordBatch } from './kvm-guest.js';

const RECORD_WORDS = 8;
const NR_OFFSET = 24; // bytes: kind, vcpu, seq precede (nr, a0, a1, a2)

export class TrackerLink {
  /** Hypercalls the tracker accepted (returned 0 to the guest). */
  applied = 0;
  /** Sees every change the tracker applies, batch by batch (SourceGuest.tapConversions). */
  tap: ConversionTap | undefined;
  private readonly off: () => void;

  constructor(
    private readonly guest: KvmGuest,
    private readonly store: CbitStore,
    readonly vmId: number,
  ) {
    this.off = guest.onBatch((b) => this.apply(b));
  }

  private apply(batch: RecordBatch): void {
    const raw = batch.raw;
    const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    const tracked: TrackedChange[] | undefined = this.tap ? [] : undefined;
    for (let i = 0; i < raw.length; i += RECORD_WORDS) {
      if (raw[i] !== 0n) continue; // events and failures are not hypercalls
      const out = this.store.applyHypercallAt(this.vmId, buf, i * 8 + NR_OFFSET);
      if (tracked && out.seq !== undefined && 'change' in out)
        tracked.push({
          seq: out.seq,
          vcpu: Number(raw[i + 1]),
          gfn: out.change.gfn,
          npages: out.change.npages,
          encrypted: out.change.encrypted,
        });
      const guestSaw = Number(BigInt.asIntN(64, raw[i + 7]));
      if (out.ret !== guestSaw)
        throw new InvariantError(
          `vCPU ${raw[i + 1]} got ${guestSaw} from the kvm exit handler but the tracker answers ${out.ret}`,
        );
      if (out.ret === 0) this.applied++;
    }
    this.store.commit();
    if (tracked && tracked.length > 0) this.tap?.(tracked);
    for (const e of batch.events)
      if (e.event === GuestEvent.ready && e.arg === 1n)
        this.store.setMigrationControl(this.vmId, KVM_MIGRATION_READY);
  }

  /** Drains the guest's queues into the tracker, then syncs (docs/design.md §3 rule 1). */
  sync(): SyncResult {
    this.guest.drain();
    return this.store.sync(this.vmId);
  }

  close(): void {
    this.off();
  }
}
