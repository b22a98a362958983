/**
 * What the guest kernel helper and its workloads see of guest memory: pages
 * they read and write through their own page tables, and the c-bit of each
 * page as the vCPU's TLB caches it from the kernel's c-bit table (which
 * itself lives in guest memory, src/guest/kernel-area.ts). The host VMM's SEV memory model (src/vmm/sim/guest-memory.ts,
 * or a real VM's memory) implements it; code in src/guest depends only on
 * this interface, never on a backend.
 */
export interface GuestMemoryView {
  /** Guest memory size in 4 KiB pages. */
  readonly npages: number;
  /** Whether the guest's page tables map gfn encrypted (c-bit set). */
  isEncrypted(gfn: number): boolean;
  /**
   * Flushes the vCPU's cached translations (its TLB) for (gfn, npages) and
   * refills them with the new c-bit, after the kernel changed its c-bit
   * table in guest memory (kernel-area.ts). The data is not converted: under
   * the new bit the old content is undefined.
   */
  setCbits(gfn: number, npages: number, encrypted: boolean): void;
  /**
   * An atomic read-modify-write of one whole page under its c-bit (the
   * guest's page-table lock around an update of a table page): `update`
   * gets the plaintext and changes it in place; no other updatePage of the
   * same page runs meanwhile.
   */
  updatePage(gfn: number, update: (plain: Uint8Array) => void): void;
  /** A guest write of one whole page under the page's current c-bit. */
  writePage(gfn: number, data: Uint8Array): void;
  /** A guest read of one whole page under the page's current c-bit. */
  readPage(gfn: number, out?: Uint8Array): Uint8Array;
}

/** Counters a workload bumps as it runs (the VMM keeps them in shared memory). */
export interface WorkloadStats {
  wrote(pages: number): void;
  converted(calls: number): void;
}
