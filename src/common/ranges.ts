/** A run of guest frames. Ranges are always (gfn, npages), never (start, end). */
export interface PageRange {
  gfn: number;
  npages: number;
}

/** A run of guest frames that share one encryption state. */
export interface StateRange extends PageRange {
  encrypted: boolean;
}

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
