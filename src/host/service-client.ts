/**
 * A client of the host service socket (service-protocol.ts). Requests are
 * pipelined: many may be in flight, each answered by id. Used by the guest
 * shim's socket transport, the CLI, tests and benchmarks; a VMM in another
 * language speaks the same bytes (docs/host-protocol.md).
 *
 * Events: 'error' (a broken frame or malformed reply from the service; the
 * connection is closed and every pending request rejected; emitted only when
 * someone listens, so a malformed reply never throws out of the event loop),
 * 'shutdown' (the service sent its SHUTTING_DOWN notice).
 */
import { EventEmitter } from 'node:events';
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { MisuseError, PeerError, RuntimeFailure } from '../common/errors.js';
import { FramedConnection, type FramedProtocol } from '../common/framed-connection.js';
import type { StateRange } from '../common/ranges.js';
import { CLIENT_OUTCOMES, type MigrationOutcome } from './migration-records.js';
import { PageStateMap } from './page-state-map.js';
import {
  HOST_FRAME,
  type HypercallArgs,
  MAX_QUERY_CHANGES,
  MAX_QUERY_RANGES,
  MessageType,
  REPLY_FLAG,
  readChanges,
  readRanges,
  readVmSummary,
  Status,
  statusName,
  TYPE_NOTICE,
  TYPE_PROTOCOL_ERROR,
  type VmSummary,
  writeHypercall,
} from './service-protocol.js';

/** The service refused a request as bad input (status BAD_PAYLOAD, UNKNOWN_VM, ...). */
export class ServiceRejectedError extends MisuseError {
  constructor(
    readonly status: number,
    readonly ret: number,
    message: string,
  ) {
    super(`ERR_SERVICE_${statusName(status)}`, message);
  }
}

/** The service failed to carry out a request (INTERNAL, SHUTTING_DOWN, a broken frame). */
export class ServiceFailedError extends RuntimeFailure {
  constructor(
    readonly status: number,
    readonly ret: number,
    message: string,
  ) {
    super(`ERR_SERVICE_${statusName(status)}`, message);
  }
}

export interface HypercallReply {
  /** The KVM return code to hand back to the guest (0, -KVM_EINVAL, ...). */
  ret: number;
  /** The change's sequence number when ret is 0. */
  seq?: number;
  message?: string;
}

export interface SyncReply {
  seq: number;
  previousSeq: number;
  delta: StateRange[];
  state: PageStateMap;
}

interface Reply {
  ret: number;
  status: number;
  message?: string;
  body: BinaryReader;
}

/** Parses the reply prefix every host service reply starts with. */
function parseReply(payload: Buffer): Reply {
  const body = new BinaryReader(payload, 'host service reply');
  const ret = body.i32('ret');
  const status = body.u16('status');
  body.u16('reserved');
  const message =
    status === Status.OK ? undefined : body.bytes(body.u32('message length'), 'message').toString('utf8');
  return { ret, status, message, body };
}

const HOST_PROTOCOL: FramedProtocol = {
  spec: HOST_FRAME,
  replyFlag: REPLY_FLAG,
  protocolErrorType: TYPE_PROTOCOL_ERROR,
  protocolError: (payload) => {
    const r = parseReply(payload);
    return new ServiceFailedError(r.status, r.ret, r.message ?? 'protocol error');
  },
};

export class HostServiceClient extends EventEmitter {
  /** Set once the service announced SHUTTING_DOWN. */
  shuttingDown = false;

  private constructor(private readonly conn: FramedConnection) {
    super();
    conn.onBroken = (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    };
    conn.onNotice = (type, payload) => {
      if (type !== TYPE_NOTICE) return;
      try {
        if (parseReply(payload).status !== Status.SHUTTING_DOWN) return;
      } catch (err) {
        conn.abort(new PeerError(`host service sent a malformed notice: ${(err as Error).message}`));
        return;
      }
      this.shuttingDown = true;
      this.emit('shutdown');
    };
  }

  static async connect(path: string): Promise<HostServiceClient> {
    return new HostServiceClient(await FramedConnection.connect(path, HOST_PROTOCOL, 'host service'));
  }

  close(): Promise<void> {
    return this.conn.close();
  }

  /** Why the connection to the service ended (it closed, broke or was aborted); undefined while open. */
  get lost(): Error | undefined {
    return this.conn.closed;
  }

  /** Sends one request; resolves with the reply (any status). */
  private async request(type: number, payload: Uint8Array): Promise<Reply> {
    const raw = await this.conn.request(type, payload);
    try {
      return parseReply(raw);
    } catch (err) {
      const broken = new PeerError(`host service sent a malformed reply: ${(err as Error).message}`, {
        cause: err,
      });
      this.conn.abort(broken);
      throw broken;
    }
  }

  /** Sends raw bytes (tests of malformed input). */
  writeRaw(bytes: Uint8Array): void {
    this.conn.writeRaw(bytes);
  }

  /** Sends a request and throws unless the status is OK. */
  private async call(type: number, payload: Uint8Array): Promise<BinaryReader> {
    const r = await this.request(type, payload);
    if (r.status !== Status.OK) throw toError(r);
    return r.body;
  }

  /** Sends a frame of any type and payload; returns the raw reply (tests of bad input). */
  async rawRequest(
    type: number,
    payload: Uint8Array,
  ): Promise<{ ret: number; status: number; message?: string }> {
    const r = await this.request(type, payload);
    return { ret: r.ret, status: r.status, message: r.message };
  }

  async registerVm(vm: number, npages: number, initialEncrypted = true): Promise<void> {
    await this.call(
      MessageType.REGISTER_VM,
      new BinaryWriter()
        .u32(vm)
        .u32(initialEncrypted ? 1 : 0)
        .u64(npages)
        .finish(),
    );
  }

  /** Forwards one hypercall; a rejected one resolves with its KVM error code. */
  async hypercall(vm: number, h: HypercallArgs): Promise<HypercallReply> {
    const w = new BinaryWriter(48).u32(vm).u32(0);
    writeHypercall(w, h);
    const r = await this.request(MessageType.HYPERCALL, w.finish());
    if (r.status === Status.HYPERCALL_REJECTED) return { ret: r.ret, message: r.message };
    if (r.status !== Status.OK) throw toError(r);
    return { ret: 0, seq: r.body.u64n('seq') };
  }

  /** Forwards a batch of hypercalls of one VM; one reply entry per call, in order. */
  async hypercallBatch(vm: number, calls: readonly HypercallArgs[]): Promise<HypercallReply[]> {
    const w = new BinaryWriter(8 + calls.length * 32).u32(vm).u32(calls.length);
    for (const h of calls) writeHypercall(w, h);
    const body = await this.call(MessageType.HYPERCALL_BATCH, w.finish());
    const count = body.u32('count');
    body.u32('reserved');
    const out: HypercallReply[] = [];
    for (let i = 0; i < count; i++) {
      const ret = body.i32('ret');
      body.u32('reserved');
      const seq = body.u64n('seq');
      out.push(ret === 0 ? { ret, seq } : { ret });
    }
    return out;
  }

  async queryVm(vm: number): Promise<VmSummary> {
    return readVmSummary(await this.call(MessageType.QUERY_VM, new BinaryWriter().u32(vm).finish()));
  }

  /** Up to max ranges starting with the one holding fromGfn; next is the gfn to continue from (0 = done). */
  async queryRanges(vm: number, fromGfn = 0, max = 4096): Promise<{ ranges: StateRange[]; next: number }> {
    const body = await this.call(
      MessageType.QUERY_RANGES,
      new BinaryWriter().u32(vm).u32(max).u64(fromGfn).finish(),
    );
    const count = body.u32('count');
    body.u32('reserved');
    const next = body.u64n('next');
    return { ranges: readRanges(body, count), next };
  }

  /** The full state of vm as the service holds it now (QUERY_RANGES, page by page). */
  async state(vm: number): Promise<PageStateMap> {
    const ranges: StateRange[] = [];
    let from = 0;
    do {
      const page = await this.queryRanges(vm, from, MAX_QUERY_RANGES);
      for (const r of page.ranges) ranges.push(r);
      from = page.next;
    } while (from !== 0);
    return stateFromRanges(ranges);
  }

  /** Takes a sync, following its cursor until every page of the delta and the state is in. */
  async sync(vm: number): Promise<SyncReply> {
    const body = await this.call(MessageType.SYNC, new BinaryWriter().u32(vm).finish());
    const seq = body.u64n('seq');
    const previousSeq = body.u64n('previous seq');
    const deltaCount = body.u64n('delta count');
    const stateCount = body.u64n('state range count');
    let cursor = body.u32('cursor');
    const ranges = readRanges(body, body.u32('count'));
    while (cursor !== 0) {
      const page = await this.call(MessageType.SYNC_NEXT, new BinaryWriter().u32(cursor).u32(0).finish());
      cursor = page.u32('cursor');
      for (const r of readRanges(page, page.u32('count'))) ranges.push(r);
    }
    if (ranges.length !== deltaCount + stateCount || stateCount < 1) {
      throw new PeerError(
        `SYNC of vm ${vm}: expected ${deltaCount} delta and ${stateCount} state ranges, got ${ranges.length} in all`,
      );
    }
    return {
      seq,
      previousSeq,
      delta: ranges.slice(0, deltaCount),
      state: stateFromRanges(ranges.slice(deltaCount)),
    };
  }

  /**
   * The committed changes of vm with seq in (afterSeq, uptoSeq], in order
   * (QUERY_CHANGES, page by page; uptoSeq at most the VM's newest change).
   */
  async changes(vm: number, afterSeq: number, uptoSeq: number): Promise<(StateRange & { seq: number })[]> {
    const out: (StateRange & { seq: number })[] = [];
    let after = afterSeq;
    for (;;) {
      const body = await this.call(
        MessageType.QUERY_CHANGES,
        new BinaryWriter().u32(vm).u32(MAX_QUERY_CHANGES).u64(after).u64(uptoSeq).finish(),
      );
      const count = body.u32('count');
      body.u32('reserved');
      const next = body.u64n('next');
      for (const c of readChanges(body, count)) out.push(c);
      if (next === 0) return out;
      after = next;
    }
  }

  /** Forgets a VM and everything stored about it. */
  async unregisterVm(vm: number): Promise<void> {
    await this.call(MessageType.UNREGISTER_VM, new BinaryWriter().u32(vm).finish());
  }

  async getMigrationControl(vm: number): Promise<bigint> {
    return (await this.call(MessageType.GET_MIGRATION_CONTROL, new BinaryWriter().u32(vm).finish())).u64(
      'value',
    );
  }

  async setMigrationControl(vm: number, value: bigint): Promise<void> {
    await this.call(MessageType.SET_MIGRATION_CONTROL, new BinaryWriter().u32(vm).u32(0).u64(value).finish());
  }

  /**
   * Opens the service's record of a migration of vm to `destination` (a
   * description, e.g. its address); every sync of vm until migrationEnd is
   * recorded against it. Resolves with the record's id.
   */
  async migrationBegin(vm: number, destination: string): Promise<number> {
    const text = Buffer.from(destination, 'utf8');
    const body = await this.call(
      MessageType.MIGRATION_BEGIN,
      new BinaryWriter().u32(vm).u32(text.length).bytes(text).finish(),
    );
    return body.u64n('migration');
  }

  /** Closes a migration record with what the migration came to (a client outcome) and why. */
  async migrationEnd(id: number, outcome: MigrationOutcome, message: string): Promise<void> {
    const code = CLIENT_OUTCOMES.indexOf(outcome) + 1;
    const text = Buffer.from(message, 'utf8');
    await this.call(
      MessageType.MIGRATION_END,
      new BinaryWriter().u64(id).u32(code).u32(text.length).bytes(text).finish(),
    );
  }

  async listVms(): Promise<number[]> {
    const body = await this.call(MessageType.LIST_VMS, new Uint8Array(0));
    const n = body.u32('count');
    return Array.from({ length: n }, () => body.u32('vm'));
  }
}

/** The map holding ranges (ascending, adjacent, covering the guest from gfn 0). */
function stateFromRanges(ranges: readonly StateRange[]): PageStateMap {
  const last = ranges[ranges.length - 1];
  const map = new PageStateMap(last.gfn + last.npages, ranges[0].encrypted);
  let expected = 0;
  for (const r of ranges) {
    if (r.gfn !== expected)
      throw new PeerError(`SYNC state range at gfn ${r.gfn} does not follow gfn ${expected}`);
    if (r.encrypted !== ranges[0].encrypted) map.apply(r.gfn, r.npages, r.encrypted);
    expected = r.gfn + r.npages;
  }
  return map;
}

function toError(r: Reply): Error {
  const message = r.message ?? statusName(r.status);
  const misuse: number[] = [
    Status.BAD_PAYLOAD,
    Status.UNKNOWN_VM,
    Status.INVALID_ARGUMENT,
    Status.UNKNOWN_TYPE,
    Status.BAD_FRAME,
  ];
  return misuse.includes(r.status)
    ? new ServiceRejectedError(r.status, r.ret, message)
    : new ServiceFailedError(r.status, r.ret, message);
}
