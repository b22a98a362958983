/**
 * GuestKernel: the guest kernel helper, the sevtrack equivalent of Linux's
 * set_memory_encrypted()/set_memory_decrypted() with
 * notify_range_enc_status_changed() behind them.
 *
 * Ordering (docs/design.md, rule 5): the guest's page tables change first, then
 * the host is notified, and the call returns only after the notification
 * returned; callers write the pages under their new c-bit only after that.
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
    // 1. The guest's own page tables.
    this.memory.setCbits(gfn, npages, encrypted);
    // 2. The host, one call per page-table chunk; returns when all returned.
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
