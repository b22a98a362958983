/**
 * What the guest kernel helper and its workloads see of guest memory: pages
 * they read and write through their own page tables, and the c-bit in those
 * page tables. The host VMM's SEV memory model (src/vmm/sim/guest-memory.ts,
 * or a real VM's memory) implements it; code in src/guest depends only on
 * this interface, never on a backend.
 */
export interface GuestMemoryView {
  /** Guest memory size in 4 KiB pages. */
  readonly npages: number;
  /** Whether the guest's page tables map gfn encrypted (c-bit set). */
  isEncrypted(gfn: number): boolean;
  /**
   * Changes the c-bit of (gfn, npages) in the guest's page tables. The data
   * is not converted: under the new bit the old content is undefined.
   */
  setCbits(gfn: number, npages: number, encrypted: boolean): void;
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
