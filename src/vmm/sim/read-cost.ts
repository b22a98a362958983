/**
 * The cost of the host's two reads in a migration round, modelled for the
 * sim backend. On a real host both are ioctls that copy a bitmap of the
 * whole guest (KVM_GET_DIRTY_LOG, and the c-bit state read), so each takes
 * time in proportion to the guest's size, during which the vCPUs run on.
 * The sim backend's own reads (a native bitmap exchange, a sync of the
 * tracker) are real and measured; this adds the copy a kernel would do, at
 * `nsPerPage` (default 4 ns per page, about 1 ms per GiB: KVM_GET_DIRTY_LOG
 * on a 1 GiB slot measured on the development machines, docs/design.md).
 *
 * The state a read returns is the state when the read began; the caller
 * gets it back only after the copy (the migration thread is busy, as in an
 * ioctl). A larger `nsPerPage` (`--read-cost`) models a slower host and
 * widens the window between the two reads of a round: the window in which
 * cbit-first's race happens (docs/design.md §3).
 */
export const DEFAULT_READ_COST_NS_PER_PAGE = 4;

/** Holds the calling (migration) thread for the modelled copy of an npages bitmap. */
export function modelReadCost(npages: number, nsPerPage: number): void {
  const ms = (npages * nsPerPage) / 1e6;
  if (ms <= 0) return;
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // An ioctl's copy: the thread is busy, the vCPUs run on.
  }
}
