/**
 * The client side of sevtrack's framed request/reply protocols (frames.ts)
 * over a Unix socket: requests are pipelined, each reply is matched to its
 * request by id and may arrive in any order. A broken frame, a protocol
 * error frame or a closed connection fails every request in flight and every
 * later one with the same error.
 */
import net from 'node:net';
import { PeerError } from './errors.js';
import { encodeFrame, FrameDecoder, type FrameSpec, isFrame } from './frames.js';

export interface FramedProtocol {
  spec: FrameSpec;
  /** A reply's type is the request's type | replyFlag. */
  replyFlag: number;
  /** The type of a frame (id 0) a server sends before it closes a connection whose framing is lost. */
  protocolErrorType: number;
  /** The error that frame's payload stands for. */
  protocolError(payload: Buffer): Error;
}

interface Waiting {
  resolve: (payload: Buffer) => void;
  reject: (err: Error) => void;
}

export class FramedConnection {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private closedError: Error | undefined;
  /** Called once when the server breaks the protocol (a bad frame, or abort()); the connection is closed. */
  onBroken: ((err: Error) => void) | undefined;
  /** Called for a frame with id 0 that is not the protocol-error type: a notice from the server. */
  onNotice: ((type: number, payload: Buffer) => void) | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly protocol: FramedProtocol,
  ) {
    const what = protocol.spec.what;
    const decoder = new FrameDecoder(protocol.spec);
    socket.on('data', (chunk: Buffer) => {
      for (const item of decoder.push(chunk)) {
        if (!isFrame(item)) {
          this.abort(new PeerError(`${what}: bad frame from the server: ${item.message}`));
          return;
        }
        try {
          this.dispatch(item.type, item.id, item.payload);
        } catch (err) {
          // A reply the protocol's parser rejects must not throw out of the event loop.
          this.abort(new PeerError(`${what}: malformed frame from the server: ${(err as Error).message}`));
          return;
        }
      }
    });
    socket.on('error', (err) =>
      this.failAll(new PeerError(`${what}: connection failed: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => this.failAll(new PeerError(`${what}: the server closed the connection`)));
  }

  /** Connects to the server at path; rejects with a PeerError naming the path. */
  static connect(path: string, protocol: FramedProtocol, serverName: string): Promise<FramedConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new FramedConnection(socket, protocol));
      });
      socket.once('error', (err) =>
        reject(
          new PeerError(`cannot connect to the ${serverName} at ${path}: ${err.message}`, { cause: err }),
        ),
      );
    });
  }

  /** Why the connection ended (closed, broken, aborted), once it has; undefined while it is open. */
  get closed(): Error | undefined {
    return this.closedError;
  }

  /** Sends one request; resolves with its reply's payload. */
  request(type: number, payload: Uint8Array): Promise<Buffer> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.socket.write(encodeFrame(this.protocol.spec, type, id, payload));
    });
  }

  /** Sends raw bytes (tests of malformed input). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Ends the connection; resolves once it is closed. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  /** The server broke the protocol: fail everything, close, tell onBroken. */
  abort(err: Error): void {
    const first = this.closedError === undefined;
    this.failAll(err);
    this.socket.destroy();
    if (first) this.onBroken?.(err);
  }

  private failAll(err: Error): void {
    this.closedError ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  private dispatch(type: number, id: number, payload: Buffer): void {
    if (type === this.protocol.protocolErrorType) {
      this.failAll(this.protocol.protocolError(payload));
      return;
    }
    if (id === 0) {
      this.onNotice?.(type, payload);
      return;
    }
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if ((type & this.protocol.replyFlag) === 0)
      w.reject(new PeerError(`reply ${id} has request type ${type}`));
    else w.resolve(payload);
  }
}
