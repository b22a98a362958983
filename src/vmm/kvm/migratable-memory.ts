/**
 * A KVM guest's RAM as the migration engine sees it (MigratableMemory,
 * src/vmm/backend.ts): raw bytes (the VM's RAM slot, an external
 * ArrayBuffer the page pipeline reads and writes in place), the kvm memory
 * model (the per-VM keystream, docs/kvm.md) as the codec, the guest's own
 * c-bit table read from its memory, and the dirty log through
 * KVM_GET_DIRTY_LOG.
 *
 * Dirty log: dirtyCount() has to harvest to count (KVM has no peek); what it
 * harvests is kept in `owed` and handed out by the next harvestDirty(), so no
 * dirty bit is lost and the rule "copy only after the harvest returns" holds
 * for those pages too (they are copied after a later harvest).
 *
 * Defined pages: the host cannot see which pages the guest wrote after their
 * last conversion, so every page counts as defined and `--verify defined`
 * compares every page, as `strict` does.
 */
import { PageBitmap } from '../../common/page-bitmap.js';
import type { MemoryCodec } from '../../common/page-crypto.js';
import type { MigratableMemory } from '../backend.js';
import type { KvmGuest } from './kvm-guest.js';
import { guestCbits } from './kvm-memory.js';
import { unpackVcpuStates } from './vcpu-pages.js';

export class KvmMemory implements MigratableMemory {
  readonly backend = 'kvm';
  readonly npages: number;
  readonly bytes: Uint8Array;
  readonly key: Uint8Array;
  readonly codec: MemoryCodec;
  readonly written: PageBitmap;
  /** Pages dirtyCount() harvested, owed to the next harvestDirty(). */
  private readonly owed: PageBitmap;

  constructor(readonly guest: KvmGuest) {
    this.npages = guest.ramPages;
    this.bytes = guest.ram;
    this.key = guest.key;
    this.codec = { cipher: 'keystream', key: guest.key };
    this.written = new PageBitmap(this.npages);
    this.written.setRange(0, this.npages);
    this.owed = new PageBitmap(this.npages);
  }

  /** The guest's own c-bit table, read from its memory now (a copy). */
  get cbits(): PageBitmap {
    return guestCbits(this.guest);
  }

  harvestDirty(out: PageBitmap): number {
    this.guest.harvestDirty(this.owed);
    const n = this.owed.count();
    out.or(this.owed);
    this.owed.clearRange(0, this.npages);
    return n;
  }

  dirtyCount(): number {
    this.guest.harvestDirty(this.owed);
    return this.owed.count();
  }

  /** Closes the VM (its vCPU threads and file descriptors). */
  close(): void {
    this.guest.close();
  }

  /** The table lives in guest RAM, zero in a VM created with boot: false; the pages bring it. */
  clearCbits(): void {}

  /** Loads every vCPU's saved state (vcpu-pages.ts) into the paused VM; returns the guest's table. */
  restoreVcpuState(state: Uint8Array, vcpus: number): PageBitmap {
    this.guest.loadVcpuStates(unpackVcpuStates(state, vcpus));
    return this.cbits;
  }
}
