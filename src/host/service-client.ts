/**
 * A client of the host service socket (service-protocol.ts). Requests are
 * pipelined: many may be in flight, each answered by id. Used by the guest
 * shim's socket transport, the CLI, tests and benchmarks; a VMM in another
 * language speaks the same bytes (docs/host-protocol.md).
 */
import net from 'node:net';
import { BinaryReader, BinaryWriter } from '../common/binary.js';
import { MisuseError, PeerError, RuntimeFailure } from '../common/errors.js';
import { encodeFrame, FrameDecoder, isFrame } from '../common/frames.js';
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

export class HostServiceClient {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private closedError: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    const decoder = new FrameDecoder(HOST_FRAME);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (!isFrame(item)) {
          this.failAll(new PeerError(`host service sent a bad frame: ${item.message}`));
          socket.destroy();
          return;
        }
        this.dispatch(item.type, item.id, item.payload);
      }
    });
    socket.on('error', (err) =>
      this.failAll(new PeerError(`host service connection failed: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => this.failAll(new PeerError('host service closed the connection')));
  }

  static connect(path: string): Promise<HostServiceClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new HostServiceClient(socket));
      });
      socket.once('error', (err) =>
        reject(
          new PeerError(`cannot connect to the host service at ${path}: ${err.message}`, { cause: err }),
        ),
      );
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  private dispatch(type: number, id: number, payload: Buffer): void {
    const body = new BinaryReader(payload, 'host service reply');
    const ret = body.i32('ret');
    const status = body.u16('status');
    body.u16('reserved');
    const message =
      status === Status.OK ? undefined : body.bytes(body.u32('message length'), 'message').toString('utf8');
    if (type === TYPE_PROTOCOL_ERROR) {
      this.failAll(new ServiceFailedError(status, ret, message ?? 'protocol error'));
      return;
    }
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if ((type & REPLY_FLAG) === 0) w.reject(new PeerError(`reply ${id} has request type ${type}`));
    else w.resolve({ ret, status, message, body });
  }

  /** Sends one request; resolves with the reply (any status). */
  private request(type: number, payload: Uint8Array): Promise<Reply> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.socket.write(encodeFrame(HOST_FRAME, type, id, payload));
    });
  }

  /** Sends raw bytes (tests of malformed input). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
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
