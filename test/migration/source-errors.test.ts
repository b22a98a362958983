/**
 * The source's failure paths (docs/design.md §3 rule 6), driven by a scripted
 * destination over an in-memory channel: a destination that answers out of
 * order, acknowledges the wrong round, sends a malformed answer, aborts, goes
 * silent, or fails after the guest was paused. Every one ends the migration
 * with a typed error naming what was expected; the source tells the peer why
 * (ABORT), and its guest runs on, unpaused, its generation unchanged.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FormatError, PeerError, RuntimeFailure } from '../../src/common/errors.js';
import type { Frame } from '../../src/common/frames.js';
import { viewDigests } from '../../src/common/page-crypto.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type FrameChannel, memoryChannelPair } from '../../src/migration/channel.js';
import { PspSession } from '../../src/migration/psp.js';
import { DEFAULT_PARAMS } from '../../src/migration/run-migration.js';
import { MigrationSource, type SourceOptions } from '../../src/migration/source.js';
import {
  decodeText,
  decodeU32,
  encodeHelloAck,
  encodeRoundAck,
  encodeText,
  MIGRATION_FRAME,
  Msg,
} from '../../src/migration/stream.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { tempDir } from '../support/tmp.js';

const stores: CbitStore[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});

const NPAGES = 256;

function setup() {
  const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
  stores.push(store);
  store.registerVm(1, NPAGES);
  const memory = GuestMemory.create(NPAGES);
  const guest = new ScriptedGuest(memory, store, 1, 5, { workingSet: 64 });
  for (let i = 0; i < 100; i++) guest.step();
  return { store, memory, guest };
}

/** The guest's view and c-bit state, which a migration that fails at the handshake must not touch. */
function snapshot(memory: GuestMemory, store: CbitStore) {
  return {
    digests: Buffer.from(viewDigests(memory.key, memory.bytes, memory.cbits.words, 0, NPAGES)).toString(
      'hex',
    ),
    cbits: Array.from(memory.cbits.words),
    host: [...store.state(1).ranges()],
    control: store.migrationControl(1),
  };
}

/**
 * A destination that answers each frame of the source through `answer`
 * (returning false stops it); what it does not answer it ignores. It
 * resolves with the reason of the source's ABORT, or undefined.
 */
async function scriptedDestination(
  ch: FrameChannel,
  answer: (f: Frame) => Promise<boolean | undefined>,
): Promise<string | undefined> {
  for (;;) {
    const f = await ch.next(20_000).catch(() => undefined);
    if (!f) return undefined;
    if (f.type === Msg.ABORT) return decodeText(f.payload, 'ABORT');
    if ((await answer(f)) === false) return undefined;
  }
}

/** The usual answers: HELLO_ACK with a real key, ROUND_ACK for each ROUND_END. */
function cooperative(ch: FrameChannel): (f: Frame) => Promise<boolean | undefined> {
  const psp = new PspSession(new Uint8Array(64));
  return async (f) => {
    if (f.type === Msg.HELLO) await ch.send(Msg.HELLO_ACK, encodeHelloAck(psp.publicKey));
    else if (f.type === Msg.ROUND_END)
      await ch.send(Msg.ROUND_ACK, encodeRoundAck(decodeU32(f.payload, 'ROUND_END'), true));
    return true;
  };
}

/** The usual answers, but frames of `type` go to `handle`. */
function cooperativeBut(
  type: number,
  handle: (ch: FrameChannel, f: Frame) => Promise<boolean | undefined>,
): (ch: FrameChannel) => (f: Frame) => Promise<boolean | undefined> {
  return (ch) => {
    const usual = cooperative(ch);
    return (f) => (f.type === type ? handle(ch, f) : usual(f));
  };
}

/** Runs a source against the scripted destination; returns the source's error and the ABORT reason it sent. */
async function migrateTo(
  s: ReturnType<typeof setup>,
  answer: (ch: FrameChannel) => (f: Frame) => Promise<boolean | undefined>,
  options: Partial<SourceOptions> = {},
): Promise<{ error: Error; abortSent: string | undefined }> {
  const [a, b] = memoryChannelPair(MIGRATION_FRAME);
  const peer = scriptedDestination(b, answer(b));
  const source = new MigrationSource({
    ...DEFAULT_PARAMS,
    log: undefined,
    guest: s.guest,
    store: s.store,
    vm: 1,
    channel: a,
    peerTimeoutMs: 10_000,
    ...options,
  });
  const error = await source.run().then(
    () => {
      throw new Error('the migration succeeded');
    },
    (e: Error) => e,
  );
  a.close();
  return { error, abortSent: await peer };
}

describe('the source aborts on a misbehaving destination, its guest running on', () => {
  it('an answer of the wrong type to HELLO: a PeerError naming both types; nothing changed', async () => {
    const s = setup();
    const before = snapshot(s.memory, s.store);
    const { error, abortSent } = await migrateTo(s, (ch) => async (f) => {
      if (f.type === Msg.HELLO) await ch.send(Msg.ROUND_ACK, encodeRoundAck(0, true));
      return true;
    });
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toBe(
      `expected message ${Msg.HELLO_ACK} from the destination, got ${Msg.ROUND_ACK}`,
    );
    expect(abortSent).toBe(error.message);
    expect(s.guest.paused).toBe(false);
    expect(snapshot(s.memory, s.store)).toEqual(before);
  });

  it('a destination that aborts in place of HELLO_ACK: its reason is in the error; nothing changed', async () => {
    const s = setup();
    const before = snapshot(s.memory, s.store);
    const { error } = await migrateTo(s, (ch) => async (f) => {
      if (f.type === Msg.HELLO) await ch.send(Msg.ABORT, encodeText('no room for this guest'));
      return false;
    });
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toBe('the destination aborted: no room for this guest');
    expect(s.guest.paused).toBe(false);
    expect(snapshot(s.memory, s.store)).toEqual(before);
  });

  it('a HELLO_ACK with a short public key: a FormatError at the key, passed on as bad input', async () => {
    const s = setup();
    const before = snapshot(s.memory, s.store);
    const { error, abortSent } = await migrateTo(s, (ch) => async (f) => {
      if (f.type === Msg.HELLO) await ch.send(Msg.HELLO_ACK, new Uint8Array(4 + 16));
      return true;
    });
    expect(error).toBeInstanceOf(FormatError);
    expect(error.message).toBe('HELLO_ACK: expected 32 more bytes for public key at offset 4, got 16');
    expect(abortSent).toBe(error.message);
    expect(s.guest.paused).toBe(false);
    expect(snapshot(s.memory, s.store)).toEqual(before);
  });

  it('an acknowledgement of another round: a PeerError naming both rounds; the guest runs on', async () => {
    const s = setup();
    const generation = s.guest.generation;
    const { error, abortSent } = await migrateTo(
      s,
      cooperativeBut(Msg.ROUND_END, async (ch, f) => {
        await ch.send(Msg.ROUND_ACK, encodeRoundAck(decodeU32(f.payload, 'ROUND_END') + 7, true));
        return true;
      }),
    );
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toBe('the destination acknowledged round 7, expected 0');
    expect(abortSent).toBe(error.message);
    expect(s.guest.paused).toBe(false);
    expect(s.guest.generation).toBe(generation);
  });

  it('a ROUND_ACK with unknown flags: a FormatError at offset 4', async () => {
    const s = setup();
    const { error } = await migrateTo(
      s,
      cooperativeBut(Msg.ROUND_END, async (ch, f) => {
        const ack = Buffer.from(encodeRoundAck(decodeU32(f.payload, 'ROUND_END'), true));
        ack.writeUInt32LE(0x80, 4);
        await ch.send(Msg.ROUND_ACK, ack);
        return true;
      }),
    );
    expect(error).toBeInstanceOf(FormatError);
    expect((error as FormatError).offset).toBe(4);
    expect(error.message).toBe('ROUND_ACK: expected flags 0 or 1 at offset 4, got 128');
    expect(s.guest.paused).toBe(false);
  });

  it('a destination silent after the handshake: --peer-timeout ends the wait with a PeerError', async () => {
    const s = setup();
    const { error, abortSent } = await migrateTo(
      s,
      (ch) => {
        const usual = cooperative(ch);
        return async (f) => (f.type === Msg.HELLO ? usual(f) : true);
      },
      { peerTimeoutMs: 300 },
    );
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toMatch(/the peer sent nothing for 300 ms \(--peer-timeout\)/);
    expect(abortSent).toBe(error.message);
    expect(s.guest.paused).toBe(false);
  });
});

describe('a failure after the pause resumes the source guest (rule 6)', () => {
  it('the destination aborts once the state arrives: the paused guest is resumed, its generation kept', async () => {
    const s = setup();
    const generation = s.guest.generation;
    let pausedAtState = false;
    const { error, abortSent } = await migrateTo(
      s,
      cooperativeBut(Msg.CBIT_STATE, async (ch) => {
        pausedAtState = s.guest.paused;
        await ch.send(Msg.ABORT, encodeText('RECEIVE_UPDATE_DATA failed'));
        return false;
      }),
    );
    expect(pausedAtState).toBe(true);
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toBe('the destination aborted: RECEIVE_UPDATE_DATA failed');
    expect(abortSent).toBeUndefined(); // the destination stopped listening
    expect(s.guest.paused).toBe(false);
    expect(s.guest.generation).toBe(generation);
    // The guest runs on: it steps and writes again.
    const ops = s.guest.operations;
    s.guest.tick('round-start', 0);
    expect(s.guest.operations).toBeGreaterThan(ops);
  });

  it('a malformed verdict: a FormatError naming RESULT; the paused guest is resumed', async () => {
    const s = setup();
    const generation = s.guest.generation;
    const { error, abortSent } = await migrateTo(
      s,
      cooperativeBut(Msg.DIGESTS, async (ch) => {
        await ch.send(Msg.RESULT, new Uint8Array(6));
        return true;
      }),
    );
    expect(error).toBeInstanceOf(FormatError);
    expect(error.message).toBe('RESULT: expected 4 more bytes for generation at offset 4, got 2');
    expect(abortSent).toBe(error.message);
    expect(s.guest.paused).toBe(false);
    expect(s.guest.generation).toBe(generation);
  });

  it('the destination gone after the pause: a PeerError; the paused guest is resumed', async () => {
    const s = setup();
    const { error } = await migrateTo(
      s,
      cooperativeBut(Msg.CBIT_STATE, async (ch) => {
        ch.close();
        return false;
      }),
    );
    expect(error).toBeInstanceOf(PeerError);
    expect(error.message).toMatch(/the peer closed the connection|the channel is closed/);
    expect(s.guest.paused).toBe(false);
  });

  it("an embedder's progress callback that throws: the migration aborts as ERR_MIGRATION with the cause", async () => {
    const s = setup();
    const bug = new TypeError('progress bar broke');
    const { error, abortSent } = await migrateTo(s, cooperative, {
      onRound: () => {
        throw bug;
      },
    });
    expect(error).toBeInstanceOf(RuntimeFailure);
    expect((error as RuntimeFailure).code).toBe('ERR_MIGRATION');
    expect(error.message).toBe('migration aborted: progress bar broke');
    expect(error.cause).toBe(bug);
    expect(abortSent).toBe('progress bar broke');
    expect(s.guest.paused).toBe(false);
  });
});
