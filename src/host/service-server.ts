/**
 * The host service: serves a CbitStore over a Unix socket with the protocol
 * of service-protocol.ts, so a VMM (or the guest shim's socket transport)
 * can forward MAP_GPA_RANGE hypercalls.
 *
 * Group commit (docs/design.md §6): hypercalls from every connection are applied
 * as they arrive and their replies held back; one commit per event-loop turn
 * makes the whole group durable, and only then are the replies written. Any
 * other request first flushes that group, so it sees (and orders after)
 * every hypercall received before it.
 */
import net from 'node:net';
import { BinaryReader, type BinaryWriter } from '../common/binary.js';
import { InvalidArgumentError, MisuseError, SevtrackError, UnknownVmError } from '../common/errors.js';
import { encodeFrame, type Frame, FrameDecoder, isFrame } from '../common/frames.js';
import { KVM_EINVAL } from '../common/kvm-abi.js';
import { listenUnixSocket } from '../common/unix-socket.js';
import type { CbitStore } from './cbit-store.js';
import { GroupCommit } from './group-commit.js';
import {
  HOST_FRAME,
  HYPERCALL_BYTES,
  MAX_BATCH,
  MAX_QUERY_RANGES,
  MessageType,
  REPLY_FLAG,
  replyWriter,
  Status,
  TYPE_PROTOCOL_ERROR,
  writeRanges,
  writeVmSummary,
} from './service-protocol.js';

export interface HostServiceOptions {
  store: CbitStore;
  socketPath: string;
  /** A group name or gid: the socket becomes mode 0660 owned by that group (else 0600). */
  group?: string;
  /** Diagnostic lines (connections, protocol errors). */
  log?: (line: string) => void;
}

export class HostService {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly commits: GroupCommit;
  private stopping = false;
  private readonly log: (line: string) => void;

  private constructor(
    private readonly store: CbitStore,
    readonly socketPath: string,
    log?: (line: string) => void,
  ) {
    this.log = log ?? (() => {});
    this.commits = new GroupCommit(store, (err) =>
      this.log(`commit failed, changes not applied: ${err.message}`),
    );
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Claims the socket path, listens (mode 0600, or 0660 with a group) and returns the running service. */
  static async start(options: HostServiceOptions): Promise<HostService> {
    const service = new HostService(options.store, options.socketPath, options.log);
    await listenUnixSocket(service.server, options.socketPath, options.group);
    return service;
  }

  /**
   * Stops accepting, answers every request already received (committing held
   * hypercalls), closes the connections and the listening socket. The store
   * stays open; its owner closes it.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.flush();
    for (const socket of this.sockets) socket.end();
    await closed;
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    const decoder = new FrameDecoder(HOST_FRAME);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (isFrame(item)) {
          this.handle(socket, item);
        } else {
          this.log(`protocol error: ${item.message}`);
          this.flush();
          const type = item.fatal ? TYPE_PROTOCOL_ERROR : item.type | REPLY_FLAG;
          this.send(socket, type, item.id, replyWriter(-KVM_EINVAL, Status.BAD_FRAME, item.message));
          if (item.fatal) socket.end();
        }
      }
    });
    socket.on('error', (err) => this.log(`connection error: ${err.message}`));
    // Replies still held for a closed socket are dropped by send().
    socket.on('close', () => this.sockets.delete(socket));
  }

  private send(socket: net.Socket, type: number, id: number, body: BinaryWriter): void {
    if (!socket.destroyed) socket.write(encodeFrame(HOST_FRAME, type, id, body.finish()));
  }

  /** Replies once the group commit holding the change is done (an INTERNAL error if it failed). */
  private hold(socket: net.Socket, frame: Frame, body: BinaryWriter): void {
    const type = frame.type | REPLY_FLAG;
    this.commits.whenDurable(
      () => this.send(socket, type, frame.id, body),
      (err) =>
        this.send(
          socket,
          type,
          frame.id,
          replyWriter(-KVM_EINVAL, Status.INTERNAL, `commit failed, changes not applied: ${err.message}`),
        ),
    );
  }

  /** Commits the group of held hypercalls and sends their replies. */
  private flush(): void {
    this.commits.flush();
  }

  private handle(socket: net.Socket, frame: Frame): void {
    const reply = (body: BinaryWriter) => this.send(socket, frame.type | REPLY_FLAG, frame.id, body);
    try {
      const r = new BinaryReader(frame.payload, `${messageName(frame.type)} payload`);
      switch (frame.type) {
        case MessageType.HYPERCALL: {
          const vm = r.u32('vm');
          r.zero32('reserved');
          const at = r.offset;
          r.bytes(HYPERCALL_BYTES, 'hypercall (nr, a0, a1, a2)');
          r.end();
          const out = this.store.applyHypercallAt(vm, frame.payload, at);
          if (out.seq === undefined) {
            reply(replyWriter(out.ret, Status.HYPERCALL_REJECTED, out.message));
          } else {
            this.hold(socket, frame, replyWriter(0, Status.OK).u64(out.seq));
          }
          return;
        }
        case MessageType.HYPERCALL_BATCH: {
          const vm = r.u32('vm');
          const count = r.u32('count');
          if (count > MAX_BATCH)
            throw new InvalidArgumentError('count', `batch of ${count} hypercalls exceeds ${MAX_BATCH}`);
          if (!this.store.hasVm(vm)) throw new UnknownVmError(vm);
          const first = r.offset;
          r.bytes(count * HYPERCALL_BYTES, `${count} hypercalls`);
          r.end();
          const body = replyWriter(0, Status.OK).u32(count).u32(0);
          for (let i = 0; i < count; i++) {
            const out = this.store.applyHypercallAt(vm, frame.payload, first + i * HYPERCALL_BYTES);
            body
              .i32(out.ret)
              .u32(0)
              .u64(out.seq ?? 0);
          }
          this.hold(socket, frame, body);
          return;
        }
        default:
          // Every other request orders after the hypercalls received before it.
          this.flush();
          reply(this.answer(frame.type, r));
      }
    } catch (err) {
      reply(errorReply(err));
    }
  }

  private answer(type: number, r: BinaryReader): BinaryWriter {
    const store = this.store;
    switch (type) {
      case MessageType.REGISTER_VM: {
        const vm = r.u32('vm');
        const flags = r.u32('flags');
        const npages = r.u64n('npages');
        r.end();
        if (flags > 1)
          throw new InvalidArgumentError(
            'flags',
            `flags 0x${flags.toString(16)}: only bit 0 (initially encrypted) is defined`,
          );
        store.registerVm(vm, npages, { initialEncrypted: (flags & 1) === 1 });
        return replyWriter(0, Status.OK);
      }
      case MessageType.QUERY_VM: {
        const vm = r.u32('vm');
        r.end();
        const info = store.info(vm);
        const body = replyWriter(0, Status.OK);
        writeVmSummary(body, info);
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
        const ranges = [];
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
      case MessageType.SYNC: {
        const vm = r.u32('vm');
        r.end();
        const s = store.sync(vm);
        const state = s.state.serialize();
        const body = replyWriter(0, Status.OK).u64(s.seq).u64(s.previousSeq).u32(s.delta.length).u32(0);
        writeRanges(body, s.delta);
        body.u32(state.length).bytes(state);
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
}

/** Turns an error into an error reply with the matching status. */
function errorReply(err: unknown): BinaryWriter {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof UnknownVmError) return replyWriter(-KVM_EINVAL, Status.UNKNOWN_VM, message);
  if (err instanceof SevtrackError && err.code === 'ERR_BAD_FORMAT')
    return replyWriter(-KVM_EINVAL, Status.BAD_PAYLOAD, message);
  if (err instanceof MisuseError) return replyWriter(-KVM_EINVAL, Status.INVALID_ARGUMENT, message);
  return replyWriter(-KVM_EINVAL, Status.INTERNAL, message);
}

function messageName(type: number): string {
  return Object.entries(MessageType).find(([, v]) => v === type)?.[0] ?? `message type ${type}`;
}
