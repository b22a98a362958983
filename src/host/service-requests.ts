/**
 * The answers of the host service to every request but the hypercalls
 * (docs/host-protocol.md): each parses its payload, acts on the store and
 * returns the reply body. The caller has committed the pending group first,
 * so every answer orders after the hypercalls received before it.
 */
import type { BinaryReader, BinaryWriter } from '../common/binary.js';
import { InvalidArgumentError } from '../common/errors.js';
import { KVM_EINVAL } from '../common/kvm-abi.js';
import type { StateRange } from '../common/ranges.js';
import type { CbitStore } from './cbit-store.js';
import { CLIENT_OUTCOMES } from './migration-records.js';
import { MAX_GUEST_PAGES } from './page-state-map.js';
import {
  MAX_QUERY_CHANGES,
  MAX_QUERY_RANGES,
  MessageType,
  replyWriter,
  Status,
  SYNC_PAGE_RANGES,
  writeChanges,
  writeRanges,
  writeVmSummary,
} from './service-protocol.js';

/** The rest of a SYNC reply: the delta ranges, then the state ranges, read lazily page by page. */
export class SyncCursor {
  private deltaAt = 0;
  private readonly stateRanges: Iterator<StateRange>;

  constructor(
    readonly vm: number,
    private readonly delta: StateRange[],
    state: { ranges(): IterableIterator<StateRange> },
  ) {
    this.stateRanges = state.ranges();
  }

  /** Writes up to SYNC_PAGE_RANGES further ranges; returns (count, done). */
  page(): { ranges: StateRange[]; done: boolean } {
    const out: StateRange[] = [];
    while (out.length < SYNC_PAGE_RANGES && this.deltaAt < this.delta.length)
      out.push(this.delta[this.deltaAt++]);
    while (out.length < SYNC_PAGE_RANGES) {
      const next = this.stateRanges.next();
      if (next.done) return { ranges: out, done: true };
      out.push(next.value);
    }
    return { ranges: out, done: false };
  }
}

/**
 * What requests need from their connection: somewhere to keep a SYNC's
 * cursor, and to know which migration records it opened (a record still
 * open when its connection closes is ended `abandoned`).
 */
export interface CursorHost {
  /** Keeps cursor; returns its id (non-zero). */
  openCursor(cursor: SyncCursor): number;
  migrationBegun(id: number): void;
  migrationEnded(id: number): void;
}

/** Answers one non-hypercall request. Throws for bad input (the caller maps errors to statuses). */
export function answer(store: CbitStore, type: number, r: BinaryReader, cursors: CursorHost): BinaryWriter {
  switch (type) {
    case MessageType.REGISTER_VM: {
      const vm = r.u32('vm');
      const flags = r.u32('flags');
      const npages = r.u64('npages');
      r.end();
      if (flags > 1)
        throw new InvalidArgumentError(
          'flags',
          `flags 0x${flags.toString(16)}: only bit 0 (initially encrypted) is defined`,
        );
      if (npages < 1n || npages > BigInt(MAX_GUEST_PAGES)) {
        throw new InvalidArgumentError(
          'npages',
          `npages ${npages} must be from 1 to 2^52 (guest size / 4 KiB)`,
        );
      }
      store.registerVm(vm, Number(npages), { initialEncrypted: (flags & 1) === 1 });
      return replyWriter(0, Status.OK);
    }
    case MessageType.UNREGISTER_VM: {
      const vm = r.u32('vm');
      r.end();
      store.unregisterVm(vm);
      return replyWriter(0, Status.OK);
    }
    case MessageType.QUERY_VM: {
      const vm = r.u32('vm');
      r.end();
      const body = replyWriter(0, Status.OK);
      writeVmSummary(body, store.info(vm));
      return body;
    }
    case MessageType.QUERY_RANGES: {
      const vm = r.u32('vm');
      const max = r.u32('max ranges');
      const from = r.u64n('from gfn');
      r.end();
      if (max < 1 || max > MAX_QUERY_RANGES) {
        throw new InvalidArgumentError(
          'max ranges',
          `max ranges ${max} must be from 1 to ${MAX_QUERY_RANGES}`,
        );
      }
      const ranges: StateRange[] = [];
      let next = 0;
      for (const range of store.state(vm).ranges(from)) {
        if (ranges.length === max) {
          next = range.gfn;
          break;
        }
        ranges.push(range);
      }
      const body = replyWriter(0, Status.OK).u32(ranges.length).u32(0).u64(next);
      writeRanges(body, ranges);
      return body;
    }
    case MessageType.QUERY_CHANGES: {
      const vm = r.u32('vm');
      const max = r.u32('max changes');
      const after = r.u64n('after seq');
      const upto = r.u64n('upto seq');
      r.end();
      if (max < 1 || max > MAX_QUERY_CHANGES)
        throw new InvalidArgumentError(
          'max changes',
          `max changes ${max} must be from 1 to ${MAX_QUERY_CHANGES}`,
        );
      const last = store.info(vm).lastSeq;
      if (upto > last || after > upto)
        throw new InvalidArgumentError(
          'upto seq',
          `changes (${after}, ${upto}] must lie within the log (0, ${last}] with after seq <= upto seq`,
        );
      const out: (StateRange & { seq: number })[] = [];
      let next = 0;
      for (const c of store.changes(vm, after, Math.min(upto, after + max))) out.push(c);
      if (out.length > 0 && out[out.length - 1].seq < upto) next = out[out.length - 1].seq;
      const body = replyWriter(0, Status.OK).u32(out.length).u32(0).u64(next);
      writeChanges(body, out);
      return body;
    }
    case MessageType.SYNC: {
      const vm = r.u32('vm');
      r.end();
      const s = store.sync(vm);
      const cursor = new SyncCursor(vm, s.delta, s.state);
      const first = cursor.page();
      const id = first.done ? 0 : cursors.openCursor(cursor);
      const body = replyWriter(0, Status.OK)
        .u64(s.seq)
        .u64(s.previousSeq)
        .u64(s.delta.length)
        .u64(s.state.rangeCount)
        .u32(id)
        .u32(first.ranges.length);
      writeRanges(body, first.ranges);
      return body;
    }
    case MessageType.GET_MIGRATION_CONTROL: {
      const vm = r.u32('vm');
      r.end();
      return replyWriter(0, Status.OK).u64(store.migrationControl(vm));
    }
    case MessageType.SET_MIGRATION_CONTROL: {
      const vm = r.u32('vm');
      r.zero32('reserved');
      const value = r.u64('value');
      r.end();
      store.setMigrationControl(vm, value);
      return replyWriter(0, Status.OK);
    }
    case MessageType.MIGRATION_BEGIN: {
      const vm = r.u32('vm');
      const length = r.u32('destination length');
      const destination = r.bytes(length, 'destination').toString('utf8');
      r.end();
      const id = store.beginMigration(vm, destination);
      cursors.migrationBegun(id);
      return replyWriter(0, Status.OK).u64(id);
    }
    case MessageType.MIGRATION_END: {
      const id = r.u64n('migration');
      const code = r.u32('outcome');
      const length = r.u32('message length');
      const message = r.bytes(length, 'message').toString('utf8');
      r.end();
      const outcome = CLIENT_OUTCOMES[code - 1];
      if (outcome === undefined)
        throw new InvalidArgumentError(
          'outcome',
          `outcome ${code} must be 1 (verified), 2 (resumed-unverified), 3 (verify-failed) or 4 (aborted)`,
        );
      store.endMigration(id, outcome, message);
      cursors.migrationEnded(id);
      return replyWriter(0, Status.OK);
    }
    case MessageType.LIST_VMS: {
      r.end();
      const ids = store.vmIds();
      const body = replyWriter(0, Status.OK).u32(ids.length);
      for (const id of ids) body.u32(id);
      return body;
    }
    default:
      return replyWriter(
        -KVM_EINVAL,
        Status.UNKNOWN_TYPE,
        `unknown message type ${type}; see docs/host-protocol.md`,
      );
  }
}
