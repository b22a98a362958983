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

/** Runs of an ascending (or any) gfn list: consecutive gfns merge. */
export function gfnsToRuns(gfns: ArrayLike<number>): PageRange[] {
  const out: PageRange[] = [];
  let start = -1;
  let n = 0;
  for (let i = 0; i < gfns.length; i++) {
    const g = gfns[i];
    if (n > 0 && g === start + n) {
      n++;
      continue;
    }
    if (n > 0) out.push({ gfn: start, npages: n });
    start = g;
    n = 1;
  }
  if (n > 0) out.push({ gfn: start, npages: n });
  return out;
}
