/**
 * One client connection of the host service: frame decoding, dispatch, the
 * bounded reply queue and the SYNC cursors (docs/host-protocol.md).
 *
 * Ordering: replies to hypercalls wait for the group commit that holds their
 * changes (docs/design.md §6, group-commit.ts), so no OK precedes its commit;
 * every other request first commits the pending group, so it orders after
 * every hypercall received before it. Replies on one connection are sent in
 * the order the requests were received.
 *
 * Bounds: while more than `replyHighWater` reply bytes wait for the client
 * to read them, the connection stops reading requests (backpressure); a
 * client whose queue still passes `replyLimit` is disconnected with a
 * reason. A partial frame is bounded by the frame limit (FrameDecoder).
 */
import type net from 'node:net';
import { BinaryReader, type BinaryWriter } from '../common/binary.js';
import { InvalidArgumentError, MisuseError, SevtrackError, UnknownVmError } from '../common/errors.js';
import { encodeFrame, type Frame, FrameDecoder, type FrameProblem, isFrame } from '../common/frames.js';
import { KVM_EINVAL } from '../common/kvm-abi.js';
import type { CbitStore } from './cbit-store.js';
import type { GroupCommit } from './group-commit.js';
import {
  HOST_FRAME,
  HYPERCALL_BYTES,
  MAX_BATCH,
  MAX_CURSORS,
  MessageType,
  REPLY_FLAG,
  replyWriter,
  Status,
  TYPE_NOTICE,
  TYPE_PROTOCOL_ERROR,
  writeRanges,
} from './service-protocol.js';
import { answer, type SyncCursor } from './service-requests.js';

/** How long a draining connection must stay idle and silent before it is ended. */
export const DRAIN_QUIET_MS = 50;

export interface ConnectionLimits {
  /** Queued reply bytes above which the connection stops reading requests. */
  replyHighWater: number;
  /** Queued reply bytes above which the client is disconnected. */
  replyLimit: number;
}

export class Connection {
  readonly decoder = new FrameDecoder(HOST_FRAME);
  private readonly cursors = new Map<number, SyncCursor>();
  private nextCursor = 1;
  /** Migration records this connection opened and has not ended. */
  private readonly migrations = new Set<number>();
  /** Replies still waiting for a group commit; the connection is idle when 0. */
  private held = 0;
  private draining = false;
  private pausedForReplies = false;
  /** Frames received but not handled yet (only while paused for replies). */
  private backlog: (Frame | FrameProblem)[] = [];
  private quietTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly socket: net.Socket,
    private readonly store: CbitStore,
    private readonly commits: GroupCommit,
    private readonly limits: ConnectionLimits,
    private readonly log: (line: string) => void,
    private readonly onIdleWhileDraining: (c: Connection) => void,
  ) {
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('close', () => this.abandonMigrations());
    socket.on('drain', () => {
      if (this.pausedForReplies) {
        this.pausedForReplies = false;
        socket.resume();
        this.work();
      }
    });
  }

  /** Bytes of a partial request frame held for this connection. */
  get partialBytes(): number {
    return this.decoder.pending;
  }

  /** Whether the connection holds no partial frame and no reply waiting for a commit. */
  get idle(): boolean {
    return this.held === 0 && this.decoder.pending === 0 && this.backlog.length === 0;
  }

  private receive(chunk: Buffer): void {
    for (const item of this.decoder.push(chunk)) this.backlog.push(item);
    this.work();
  }

  /**
   * Handles the received frames in order, stopping while the client is not
   * reading its replies (the rest wait here, and no more bytes are read).
   */
  private work(): void {
    while (this.backlog.length > 0 && !this.pausedForReplies && !this.socket.destroyed) {
      const item = this.backlog.shift()!;
      if (isFrame(item)) {
        this.handle(item);
        continue;
      }
      this.log(`protocol error: ${item.message}`);
      this.commits.flush();
      if (item.fatal) {
        this.backlog = [];
        this.disconnect(Status.BAD_FRAME, item.message);
        return;
      }
      this.send(item.type | REPLY_FLAG, item.id, replyWriter(-KVM_EINVAL, Status.BAD_FRAME, item.message));
    }
    if (this.draining) this.armQuiet();
  }

  /**
   * While draining, a connection is ended once it has been idle (no partial
   * frame, no unanswered request) and has sent nothing for DRAIN_QUIET_MS:
   * a client still sending when the notice went out gets every request
   * answered SHUTTING_DOWN instead of a reset in the middle of its writes.
   */
  private armQuiet(): void {
    clearTimeout(this.quietTimer);
    this.quietTimer = setTimeout(() => {
      if (this.idle) this.onIdleWhileDraining(this);
      else this.armQuiet();
    }, DRAIN_QUIET_MS);
  }

  /** Writes one frame unless the socket is gone, applying the reply-queue bounds. */
  send(type: number, id: number, body: BinaryWriter): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) return;
    s.write(encodeFrame(HOST_FRAME, type, id, body.finish()));
    if (s.writableLength > this.limits.replyLimit) {
      this.log(`disconnecting a client that does not read its replies (${s.writableLength} bytes queued)`);
      s.destroy();
    } else if (s.writableLength > this.limits.replyHighWater && !this.pausedForReplies) {
      this.pausedForReplies = true;
      s.pause();
    }
  }

  /**
   * Sends the reason (a TYPE_PROTOCOL_ERROR frame, id 0) and closes the
   * connection once it is written.
   */
  disconnect(status: number, reason: string): void {
    this.send(TYPE_PROTOCOL_ERROR, 0, replyWriter(-KVM_EINVAL, status, reason));
    this.socket.pause();
    this.socket.end(() => this.socket.destroy());
    // A client that does not read the reason is cut anyway.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /**
   * Starts draining: tells the client (a TYPE_NOTICE frame, SHUTTING_DOWN);
   * from now on requests are answered SHUTTING_DOWN without being carried
   * out. The caller ends the connection once it is idle.
   */
  startDrain(): void {
    this.draining = true;
    this.send(TYPE_NOTICE, 0, replyWriter(0, Status.SHUTTING_DOWN, 'the host service is shutting down'));
    this.socket.once('close', () => clearTimeout(this.quietTimer));
    this.armQuiet();
  }

  private handle(frame: Frame): void {
    const type = frame.type | REPLY_FLAG;
    const reply = (body: BinaryWriter) => this.send(type, frame.id, body);
    if (this.draining) {
      reply(
        replyWriter(
          -KVM_EINVAL,
          Status.SHUTTING_DOWN,
          'the host service is shutting down; request not carried out',
        ),
      );
      return;
    }
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
          if (out.seq === undefined) reply(replyWriter(out.ret, Status.HYPERCALL_REJECTED, out.message));
          else this.hold(frame, replyWriter(0, Status.OK).u64(out.seq));
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
          this.hold(frame, body);
          return;
        }
        case MessageType.SYNC_NEXT: {
          const id = r.u32('cursor');
          r.zero32('reserved');
          r.end();
          const cursor = this.cursors.get(id);
          if (!cursor) {
            reply(
              replyWriter(
                -KVM_EINVAL,
                Status.UNKNOWN_CURSOR,
                `cursor ${id} is not open on this connection; send SYNC again`,
              ),
            );
            return;
          }
          const page = cursor.page();
          if (page.done) this.cursors.delete(id);
          const body = replyWriter(0, Status.OK)
            .u32(page.done ? 0 : id)
            .u32(page.ranges.length);
          writeRanges(body, page.ranges);
          reply(body);
          return;
        }
        default:
          // Every other request orders after the hypercalls received before it.
          this.commits.flush();
          reply(answer(this.store, frame.type, r, this));
      }
    } catch (err) {
      reply(errorReply(err));
    }
  }

  migrationBegun(id: number): void {
    this.migrations.add(id);
  }

  migrationEnded(id: number): void {
    this.migrations.delete(id);
  }

  /**
   * The client went away without ending the migrations it began: their
   * records end `abandoned` (the migrating process is gone or cut off, so
   * nobody will end them), which frees the VM for the next migration.
   * Idempotent; the service's drain calls it for every connection before
   * its store closes, whatever order the close events come in.
   */
  abandonMigrations(): void {
    const why = this.draining
      ? 'the host service shut down while the migration was open'
      : "the migrating client's connection closed before MIGRATION_END";
    for (const id of this.migrations) {
      try {
        this.store.endMigration(id, 'abandoned', why);
      } catch (err) {
        this.log(`cannot end migration ${id} as abandoned: ${(err as Error).message}`);
      }
    }
    this.migrations.clear();
  }

  /** Keeps a SYNC cursor (dropping the oldest beyond MAX_CURSORS); returns its id. */
  openCursor(cursor: SyncCursor): number {
    if (this.cursors.size >= MAX_CURSORS) this.cursors.delete(this.cursors.keys().next().value as number);
    const id = this.nextCursor;
    this.nextCursor = this.nextCursor === 0xffff_ffff ? 1 : this.nextCursor + 1;
    this.cursors.set(id, cursor);
    return id;
  }

  /** Replies once the group commit holding the change is done (INTERNAL if it failed). */
  private hold(frame: Frame, body: BinaryWriter): void {
    const type = frame.type | REPLY_FLAG;
    this.held++;
    this.commits.whenDurable(
      () => {
        this.held--;
        this.send(type, frame.id, body);
      },
      (err) => {
        this.held--;
        this.send(
          type,
          frame.id,
          replyWriter(-KVM_EINVAL, Status.INTERNAL, `commit failed, changes not applied: ${err.message}`),
        );
      },
    );
  }
}

/** Turns an error into an error reply with the matching status. */
export function errorReply(err: unknown): BinaryWriter {
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
