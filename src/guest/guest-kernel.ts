/**
 * GuestKernel: the guest kernel helper, the sevtrack equivalent of Linux's
 * set_memory_encrypted()/set_memory_decrypted() with
 * notify_range_enc_status_changed() behind them.
 *
 * Ordering (docs/design.md, rule 5): the guest's page tables change first, then
 * the host is notified, and the call returns only after the notification
 * returned; callers write the pages under their new c-bit only after that.
 *
 * The kernel's c-bit table is the source of truth for the guest's c-bits and
 * lives in guest memory (kernel-area.ts), private, so it migrates with the
 * pages. A conversion (1) updates the table in memory under the page-table
 * lock, (2) flushes the TLB for the range (the SEV model takes each access's
 * c-bit from it, as a CPU does), (3) notifies the host. A vCPU parks only
 * between two guest operations, so at a pause table and TLB agree.
 */

import { InvalidArgumentError } from '../common/errors.js';
import {
  encodeAttributes,
  KVM_CPUID_FEATURES,
  KVM_ENOSYS,
  KVM_FEATURE_HC_MAP_GPA_RANGE,
  KVM_FEATURE_MIGRATION_CONTROL,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MAP_GPA_RANGE_PAGE_SZ_1G,
  KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
  KVM_MAP_GPA_RANGE_PAGE_SZ_4K,
  KVM_MIGRATION_READY,
  MSR_KVM_MIGRATION_CONTROL,
} from '../common/kvm-abi.js';
import { PAGE_SIZE } from '../common/ranges.js';
import type { GuestMemoryView } from './guest-memory-view.js';
import type { HypercallPort } from './hypercall-port.js';
import {
  addHeartbeat,
  areaPageGfns,
  checkHeader,
  KERNEL_ROOT_GFN,
  kernelPages,
  readHeartbeat,
  setTableBits,
  tableBitAt,
  writeHeader,
} from './kernel-area.js';

const PAGES_2M = 512;
const PAGES_1G = 512 * 512;

export interface GuestKernelOptions {
  /**
   * Send the 2M/1G size code for aligned chunks instead of always the 4K code
   * (Linux sends 4K; the size is only a hint).
   */
  sizeHints?: boolean;
}

/** One notification: a page-table-level chunk of a conversion. */
export interface Notification {
  gfn: number;
  npages: number;
  pageSizeCode: number;
}

/**
 * Splits (gfn, npages) the way Linux walks the page tables: one chunk per
 * mapping, using 1 GiB and 2 MiB pages where the range is aligned and big
 * enough, 4 KiB pages elsewhere.
 */
export function pageTableChunks(gfn: number, npages: number): Notification[] {
  const out: Notification[] = [];
  let g = gfn;
  const end = gfn + npages;
  while (g < end) {
    if (g % PAGES_1G === 0 && end - g >= PAGES_1G) {
      out.push({ gfn: g, npages: PAGES_1G, pageSizeCode: KVM_MAP_GPA_RANGE_PAGE_SZ_1G });
      g += PAGES_1G;
    } else if (g % PAGES_2M === 0 && end - g >= PAGES_2M) {
      out.push({ gfn: g, npages: PAGES_2M, pageSizeCode: KVM_MAP_GPA_RANGE_PAGE_SZ_2M });
      g += PAGES_2M;
    } else {
      out.push({ gfn: g, npages: 1, pageSizeCode: KVM_MAP_GPA_RANGE_PAGE_SZ_4K });
      g += 1;
    }
  }
  return out;
}

export class GuestKernel {
  private notifying: boolean;
  /** Whether this kernel told the host it is READY. */
  private ready = false;
  /** Whether the host supports the migration-control MSR. */
  readonly hasMigrationControl: boolean;
  private readonly sizeHints: boolean;
  /** Hypercalls the host rejected with an error other than ENOSYS (Linux ignores them; OVMF logs). */
  rejectedNotifications = 0;
  /** Hypercalls issued. */
  notifications = 0;
  /** Whether the c-bit table is in guest memory (boot() or resumeMigrated() ran). */
  private booted = false;

  constructor(
    private readonly memory: GuestMemoryView,
    private readonly port: HypercallPort,
    options: GuestKernelOptions = {},
  ) {
    const features = port.cpuid(KVM_CPUID_FEATURES).eax;
    this.notifying = ((features >>> KVM_FEATURE_HC_MAP_GPA_RANGE) & 1) === 1;
    this.hasMigrationControl = ((features >>> KVM_FEATURE_MIGRATION_CONTROL) & 1) === 1;
    this.sizeHints = options.sizeHints ?? false;
  }

  /** Pages of the kernel's own area (c-bit table and heartbeat) from KERNEL_ROOT_GFN. */
  get areaPages(): number {
    return kernelPages(this.memory.npages);
  }

  /**
   * Boot: makes the kernel area private (notifying the host like any
   * conversion) and writes the c-bit table from the c-bits the firmware left
   * (the TLB's view at boot). Call once, before any conversion.
   */
  boot(): void {
    const k = this.areaPages;
    let shared = false;
    for (let g = KERNEL_ROOT_GFN; g < KERNEL_ROOT_GFN + k; g++) shared ||= !this.memory.isEncrypted(g);
    if (shared) {
      this.memory.setCbits(KERNEL_ROOT_GFN, k, true);
      this.notify(KERNEL_ROOT_GFN, k, true);
    }
    const n = this.memory.npages;
    for (let i = 0; i < k; i++) {
      const page = new Uint8Array(PAGE_SIZE);
      if (i === 0) writeHeader(page, n);
      const { first, end } = areaPageGfns(i, n);
      for (let g = first; g < end; g++) {
        if (this.memory.isEncrypted(g)) setTableBits(page, i, g, 1, true);
      }
      this.memory.writePage(KERNEL_ROOT_GFN + i, page);
    }
    this.booted = true;
  }

  /**
   * After a migration: the kernel finds its table in the memory it woke up
   * in (throws a FormatError if it is not there) and READY as the migrated
   * migration-control MSR says.
   */
  resumeMigrated(ready: boolean): void {
    this.attachTable();
    this.ready = ready && this.notifying && this.hasMigrationControl;
  }

  /**
   * Another vCPU's view of a kernel that booted (or resumed) on vCPU 0:
   * checks the table is in memory and maintains it from now on.
   */
  attachTable(): void {
    checkHeader(this.memory.readPage(KERNEL_ROOT_GFN), this.memory.npages);
    this.booted = true;
  }

  /** Adds one to the heartbeat counter in guest memory (vCPU 0, once per workload step). */
  heartbeat(): void {
    this.memory.updatePage(KERNEL_ROOT_GFN, addHeartbeat);
  }

  /** The heartbeat counter as the guest reads it. */
  readHeartbeat(): bigint {
    return readHeartbeat(this.memory.readPage(KERNEL_ROOT_GFN));
  }

  /** False once the host lacks the hypercall (no CPUID bit, or it answered -KVM_ENOSYS). */
  get migrationSupported(): boolean {
    return this.notifying;
  }

  /**
   * Tells the host this guest reports every c-bit change (MSR write of
   * KVM_MIGRATION_READY). Returns false, and sets nothing, when the host lacks
   * the protocol or the migration-control MSR.
   */
  enableMigration(): boolean {
    if (!this.notifying || !this.hasMigrationControl) return false;
    this.port.wrmsr(MSR_KVM_MIGRATION_CONTROL, KVM_MIGRATION_READY);
    this.ready = true;
    return true;
  }

  /**
   * Before kexec into a kernel that may not report changes: clear READY so
   * the host refuses to migrate rather than migrate wrongly.
   */
  prepareKexec(): void {
    if (this.hasMigrationControl) this.port.wrmsr(MSR_KVM_MIGRATION_CONTROL, 0n);
    this.ready = false;
  }

  setMemoryEncrypted(gpa: number, npages: number): void {
    this.convert(gpa, npages, true);
  }

  setMemoryDecrypted(gpa: number, npages: number): void {
    this.convert(gpa, npages, false);
  }

  private convert(gpa: number, npages: number, encrypted: boolean): void {
    if (!Number.isInteger(gpa) || gpa < 0 || gpa % PAGE_SIZE !== 0) {
      throw new InvalidArgumentError('gpa', `gpa ${gpa} must be a non-negative multiple of 4096`);
    }
    const gfn = Math.floor(gpa / PAGE_SIZE);
    if (!Number.isInteger(npages) || npages < 1 || gfn + npages > this.memory.npages) {
      throw new InvalidArgumentError(
        'npages',
        `npages ${npages} at gpa 0x${gpa.toString(16)} must be >= 1 and stay inside guest memory`,
      );
    }
    const k = this.areaPages;
    if (this.booted && gfn < KERNEL_ROOT_GFN + k && gfn + npages > KERNEL_ROOT_GFN)
      throw new InvalidArgumentError(
        'gpa',
        `gpa 0x${gpa.toString(16)} (+${npages} pages) overlaps the kernel's c-bit table (gfns ${KERNEL_ROOT_GFN}-${KERNEL_ROOT_GFN + k - 1}), which stays private`,
      );
    // 1. The guest's own page tables, in guest memory, under the page-table lock.
    if (this.booted) {
      const last = tableBitAt(gfn + npages - 1).page;
      for (let i = tableBitAt(gfn).page; i <= last; i++) {
        this.memory.updatePage(KERNEL_ROOT_GFN + i, (page) => {
          setTableBits(page, i, gfn, npages, encrypted);
        });
      }
    }
    // 2. The TLB for the range, so the next access uses the new c-bit.
    this.memory.setCbits(gfn, npages, encrypted);
    // 3. The host, one call per page-table chunk; returns when all returned.
    this.notify(gfn, npages, encrypted);
  }

  private notify(gfn: number, npages: number, encrypted: boolean): void {
    if (!this.notifying) return;
    for (const chunk of pageTableChunks(gfn, npages)) {
      const code = this.sizeHints ? chunk.pageSizeCode : KVM_MAP_GPA_RANGE_PAGE_SZ_4K;
      this.notifications++;
      const ret = this.port.hypercall(
        KVM_HC_MAP_GPA_RANGE,
        BigInt(chunk.gfn) * BigInt(PAGE_SIZE),
        BigInt(chunk.npages),
        encodeAttributes(encrypted, code),
      );
      if (ret === -KVM_ENOSYS) {
        // The host does not track c-bits: stop asking, and withdraw READY.
        this.notifying = false;
        if (this.ready) this.prepareKexec();
        return;
      }
      if (ret !== 0) this.rejectedNotifications++;
    }
  }
}
