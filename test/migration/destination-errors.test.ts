/**
 * The destination's failure paths (docs/design.md §9), driven by a scripted
 * source over an in-memory channel: no HELLO, the wrong first message, a
 * guest this machine cannot hold, and after the handshake an unknown
 * message, pages or state that do not fit the guest, the verdict's inputs
 * out of order, the source's ABORT, silence and a closed channel. Each run
 * rejects with a typed error naming what was expected (the partial guest is
 * never returned), tells the source why, and the log records the abort.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FormatError, PeerError, RuntimeFailure } from '../../src/common/errors.js';
import { bitmapWordCount } from '../../src/common/page-bitmap.js';
import { PageStateMap } from '../../src/host/page-state-map.js';
import { type FrameChannel, memoryChannelPair } from '../../src/migration/channel.js';
import { MigrationDestination } from '../../src/migration/destination.js';
import { MigrationLogReader } from '../../src/migration/log-reader.js';
import { PspSession, UNLIMITED_PSP } from '../../src/migration/psp.js';
import { runDestination } from '../../src/migration/run-destination.js';
import {
  decodeHelloAck,
  decodeText,
  encodeDigests,
  encodeHello,
  encodePages,
  encodeText,
  encodeU32,
  type Hello,
  MIGRATION_FRAME,
  Msg,
} from '../../src/migration/stream.js';
import { syntheticVmsa } from '../../src/vmm/backend.js';
import { tempDir } from '../support/tmp.js';

const NPAGES = 64;

/** A scripted source: its channel end and its PSP (SEND_START runs on the destination's HELLO_ACK). */
function scriptedSource() {
  const [src, dst] = memoryChannelPair(MIGRATION_FRAME);
  const psp = new PspSession(new Uint8Array(64));
  const hello: Hello = {
    npages: NPAGES,
    vcpus: 1,
    protocol: 'safe',
    verify: 'strict',
    generation: 3,
    publicKey: psp.publicKey,
  };
  return {
    src,
    dst,
    psp,
    hello,
    /** HELLO, then the HELLO_ACK (SEND_START with its key). */
    async handshake(h: Partial<Hello> = {}) {
      await src.send(Msg.HELLO, encodeHello({ ...hello, ...h }));
      const ack = await src.next(10_000);
      expect(ack.type).toBe(Msg.HELLO_ACK);
      const { publicKey, error } = decodeHelloAck(ack.payload);
      if (error) return error;
      psp.sendStart(publicKey!);
      return undefined;
    },
    /** The destination's last word: the reason of its ABORT. */
    async abortReason(): Promise<string> {
      for (;;) {
        const f = await src.next(10_000);
        if (f.type === Msg.ABORT) return decodeText(f.payload, 'ABORT');
      }
    },
  };
}

function destination(dst: FrameChannel, o: { peerTimeoutMs?: number; handshakeTimeoutMs?: number } = {}) {
  return new MigrationDestination({ channel: dst, peerTimeoutMs: o.peerTimeoutMs ?? 10_000, ...o }).run();
}

/** The error a destination run ends with (and that it never resolved). */
async function failure(run: Promise<unknown>): Promise<Error> {
  return run.then(
    () => {
      throw new Error('the destination resumed a guest');
    },
    (e: Error) => e,
  );
}

describe('the destination refuses a bad handshake', () => {
  it('no HELLO within --handshake-timeout: a PeerError naming the flag', async () => {
    const s = scriptedSource();
    const err = await failure(destination(s.dst, { handshakeTimeoutMs: 100 }));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe('the source sent no handshake (HELLO) within 100 ms (--handshake-timeout)');
  });

  it('another message first: a PeerError naming it, and the source told', async () => {
    const s = scriptedSource();
    const run = failure(destination(s.dst));
    await s.src.send(Msg.ROUND_END, encodeU32(0));
    const err = await run;
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe(`expected HELLO from the source, got message ${Msg.ROUND_END}`);
    expect(await s.abortReason()).toBe(err.message);
  });

  it('a HELLO with an unknown verify mode: a FormatError at offset 13, and the source told', async () => {
    const s = scriptedSource();
    const run = failure(destination(s.dst));
    const hello = Buffer.from(encodeHello(s.hello));
    hello.writeUInt8(7, 13);
    await s.src.send(Msg.HELLO, hello);
    const err = await run;
    expect(err).toBeInstanceOf(FormatError);
    expect(err.message).toBe('HELLO: expected a verify mode below 2 at offset 13, got 7');
    expect(await s.abortReason()).toBe(err.message);
  });

  it('a guest larger than this machine holds: HELLO_ACK says why, a local ERR_ALLOCATION, nothing allocated', async () => {
    const s = scriptedSource();
    const log = join(tempDir(), 'dest.db');
    const run = failure(runDestination({ peerTimeoutMs: 10_000, psp: UNLIMITED_PSP, log }, s.dst));
    const refusal = await s.handshake({ npages: 2 ** 40 });
    const err = await run;
    expect(err).toBeInstanceOf(RuntimeFailure);
    expect((err as RuntimeFailure).code).toBe('ERR_ALLOCATION');
    expect(err.message).toMatch(
      /^destination cannot allocate the guest \(1099511627776 pages\): --memory 4096 TiB is more than one guest can hold \(.*\); choose --memory .* or less$/,
    );
    expect(refusal).toBe(err.message);
    // The refusal came before the log was created: nothing was written.
    expect(() => MigrationLogReader.open(log)).toThrow(/no such file/);
  });
});

describe('after the handshake, the destination aborts and discards its partial guest', () => {
  /** Runs the destination with a log, does the handshake, then feeds it `frames`; returns its error and log. */
  async function feed(
    frames: (s: ReturnType<typeof scriptedSource>) => Promise<void>,
    o: { peerTimeoutMs?: number } = {},
  ) {
    const s = scriptedSource();
    const log = join(tempDir(), 'dest.db');
    const run = failure(
      runDestination({ peerTimeoutMs: o.peerTimeoutMs ?? 10_000, psp: UNLIMITED_PSP, log }, s.dst),
    );
    expect(await s.handshake()).toBeUndefined();
    await frames(s);
    const err = await run;
    const reader = MigrationLogReader.open(log);
    const events = reader.events;
    reader.close();
    return { err, s, events };
  }

  /** The log's last words: the abort with its reason, then the end. */
  function expectAbortLogged(events: { kind: string; detail: Record<string, unknown> }[], reason: string) {
    const abort = events.find((e) => e.kind === 'abort');
    expect(abort?.detail.reason).toBe(reason);
    expect(events.at(-1)?.kind).toBe('end');
    expect(events.some((e) => e.kind === 'resume')).toBe(false);
  }

  it('an unknown message type: a PeerError naming it; ABORT sent; the log says why', async () => {
    const { err, s, events } = await feed((s) => s.src.send(99, new Uint8Array(0)));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe('unexpected message 99 from the source');
    expect(await s.abortReason()).toBe(err.message);
    expectAbortLogged(events, err.message);
  });

  it('the source aborts: its reason is in the error and the log', async () => {
    const { err, events } = await feed((s) => s.src.send(Msg.ABORT, encodeText('guest paused too long')));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe('the source aborted: guest paused too long');
    expectAbortLogged(events, err.message);
  });

  it('a raw page past the end of the guest: a PeerError naming the gfn and the guest size', async () => {
    const { err, s } = await feed((s) =>
      s.src.send(
        Msg.PAGES_RAW,
        encodePages({ round: 0, gfns: new Float64Array([NPAGES]), firstSeq: 0, data: new Uint8Array(4096) }),
      ),
    );
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toMatch(new RegExp(`gfn ${NPAGES} is outside the guest \\(${NPAGES} pages\\)`));
    expect(await s.abortReason()).toBe(err.message);
  });

  it('a c-bit state of another size: a PeerError naming both page counts', async () => {
    const { err } = await feed((s) => s.src.send(Msg.CBIT_STATE, new PageStateMap(NPAGES * 2).serialize()));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe(`CBIT_STATE covers ${NPAGES * 2} pages, the guest ${NPAGES}`);
  });

  it('the retired GUEST_PAGE_TABLES (the table travels in guest memory): a PeerError naming the message', async () => {
    const { err } = await feed((s) => s.src.send(Msg.GUEST_PAGE_TABLES, new Uint8Array(3)));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe(`unexpected message ${Msg.GUEST_PAGE_TABLES} from the source`);
  });

  it('DIGESTS before the c-bit and vCPU state: a PeerError, no verdict', async () => {
    const digests = encodeDigests({
      digests: new Uint8Array(NPAGES * 16),
      defined: new Uint32Array(bitmapWordCount(NPAGES)),
    });
    const { err, events } = await feed((s) => s.src.send(Msg.DIGESTS, digests));
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe('DIGESTS arrived before the c-bit state and vCPU state');
    expect(events.some((e) => e.kind === 'verification')).toBe(false);
  });

  it('a VMSA that holds no vCPU registers: a PeerError naming the vCPU state, before any verdict', async () => {
    const { err } = await feed(async (s) => {
      await s.src.send(Msg.CBIT_STATE, new PageStateMap(NPAGES).serialize());
      const ids = new Float64Array([0]);
      const vmsa = s.psp.sendUpdateVmsa(syntheticVmsa(1, [1]), ids);
      await s.src.send(
        Msg.VMSA,
        encodePages({ round: 1, gfns: ids, firstSeq: vmsa.firstSeq, data: vmsa.sealed }),
      );
      await s.src.send(
        Msg.DIGESTS,
        encodeDigests({
          digests: new Uint8Array(NPAGES * 16),
          defined: new Uint32Array(bitmapWordCount(NPAGES)),
        }),
      );
    });
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe(
      "the guest's vCPU state or c-bit table did not arrive intact: vCPU state: expected magic VCPU at offset 0, got 0x9e3779b0",
    );
  });

  it('a source silent after the handshake: --peer-timeout aborts, naming the flag', async () => {
    const { err, events } = await feed(async () => {}, { peerTimeoutMs: 200 });
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toMatch(/the peer sent nothing for 200 ms \(--peer-timeout\)/);
    expectAbortLogged(events, err.message);
  });

  it('a source that closes the channel mid-stream: a PeerError, the log says why', async () => {
    const { err, events } = await feed(async (s) => {
      await s.src.send(Msg.ROUND_END, encodeU32(0));
      expect((await s.src.next(10_000)).type).toBe(Msg.ROUND_ACK);
      s.src.close();
    });
    expect(err).toBeInstanceOf(PeerError);
    expect(err.message).toBe('the peer closed the connection');
    expectAbortLogged(events, err.message);
  });
});
