/**
 * A client of the host service socket (service-protocol.ts). Requests are
 * pipelined: many may be in flight, each answered by id. Used by the guest
 * shim's socket transport, the CLI, tests and benchmarks; a VMM in another
 * language speaks the same bytes (docs/host-protocol.md).
 */
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { MisuseError, RuntimeFailure } from '../common/errors.js';
import { FramedConnection, type FramedProtocol } from '../common/framed-connection.js';
import type { StateRange } from '../common/ranges.js';
import { PageStateMap } from './page-state-map.js';
import {
  HOST_FRAME,
  type HypercallArgs,
  MessageType,
  REPLY_FLAG,
  readRanges,
  readVmSummary,
  Status,
  statusName,
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

export class HostServiceClient {
  private constructor(private readonly conn: FramedConnection) {}

  static async connect(path: string): Promise<HostServiceClient> {
    return new HostServiceClient(await FramedConnection.connect(path, HOST_PROTOCOL, 'host service'));
  }

  close(): Promise<void> {
    return this.conn.close();
  }

  /** Sends one request; resolves with the reply (any status). */
  private async request(type: number, payload: Uint8Array): Promise<Reply> {
    return parseReply(await this.conn.request(type, payload));
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

  async sync(vm: number): Promise<SyncReply> {
    const body = await this.call(MessageType.SYNC, new BinaryWriter().u32(vm).finish());
    const seq = body.u64n('seq');
    const previousSeq = body.u64n('previous seq');
    const n = body.u32('delta count');
    body.u32('reserved');
    const delta = readRanges(body, n);
    const state = PageStateMap.deserialize(body.bytes(body.u32('state length'), 'state'));
    return { seq, previousSeq, delta, state };
  }

  async getMigrationControl(vm: number): Promise<bigint> {
    return (await this.call(MessageType.GET_MIGRATION_CONTROL, new BinaryWriter().u32(vm).finish())).u64(
      'value',
    );
  }

  async setMigrationControl(vm: number, value: bigint): Promise<void> {
    await this.call(MessageType.SET_MIGRATION_CONTROL, new BinaryWriter().u32(vm).u32(0).u64(value).finish());
  }

  async listVms(): Promise<number[]> {
    const body = await this.call(MessageType.LIST_VMS, new Uint8Array(0));
    const n = body.u32('count');
    return Array.from({ length: n }, () => body.u32('vm'));
  }
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
