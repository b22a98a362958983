/**
 * The source's verification reference (docs/design.md §3 rule 6): the guest's
 * view of every page at pause, under the guest's c-bit table at pause,
 * never under a live table.
 *
 * The view MACs are taken as the pages are sent (the seal or copy into the
 * frame writes them, view-macs.ts), each recorded with the c-bit of the
 * perspective it was sent from. Invariant: a valid MAC is the view of the
 * page's bytes as they were when sent under the recorded c-bit, and a page
 * written since is in a harvest noted here (noteWritten) or in one still to
 * come; sending it again makes it valid again. At pause, after the final
 * round, finish() rehashes under the paused table the pages not valid and
 * those whose recorded c-bit differs from the paused table's: every other
 * MAC is exact, same c-bit and same bytes as at pause. Nothing is rehashed
 * while the guest runs: with the safe protocol every stale page is sent again
 * (its MAC taken again in that pass) before the pause, and a rehash under a
 * live table could record, for a page converted and converted back while it
 * was hashed, the view under the intermediate c-bit.
 */
import type { PageBitmap } from '../common/page-bitmap.js';
import type { MigratableMemory } from '../vmm/backend.js';
import { ViewMacTable } from './view-macs.js';

export class ReferenceDigests {
  /** The MACs; the page sender writes into `table.output` and calls `table.noteMoved`. */
  readonly table: ViewMacTable;

  /**
   * `key`: the view-MAC key both sides derive (PspSession.viewMacKey);
   * `macs`: where the table lives (the DIGESTS payload, stream.ts digestsPayload).
   */
  constructor(
    private readonly memory: MigratableMemory,
    key: Uint8Array,
    macs?: Uint8Array,
  ) {
    this.table = new ViewMacTable(memory, key, macs);
  }

  /** Records a harvest: every page written since it was sent must be noted here. */
  noteWritten(harvest: PageBitmap): void {
    this.table.invalidate(harvest);
  }

  /**
   * At pause, after the final round (the guest's memory and c-bit table no
   * longer change): brings the MACs to the paused view. Returns them and how
   * many pages were redone.
   */
  finish(): { digests: Uint8Array; rehashed: number } {
    const { macs, rehashed } = this.table.finish(this.memory.cbits);
    return { digests: macs, rehashed };
  }
}
