/**
 * The HELLO names the source's backend (docs/migration-stream.md): byte 14,
 * 0 = sim as every older source sent, 1 = kvm; a destination of another
 * backend refuses the migration in its HELLO_ACK, naming --backend, and
 * releases what it allocated.
 */
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/common/errors.js';
import { memoryChannelPair } from '../../src/migration/channel.js';
import { MigrationDestination } from '../../src/migration/destination.js';
import { PspSession } from '../../src/migration/psp.js';
import {
  decodeHello,
  decodeHelloAck,
  encodeHello,
  type Hello,
  MIGRATION_FRAME,
  Msg,
} from '../../src/migration/stream.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';

const hello: Hello = {
  npages: 64,
  vcpus: 1,
  protocol: 'safe',
  verify: 'strict',
  generation: 0,
  publicKey: new PspSession(new Uint8Array(32).fill(1)).publicKey,
};

describe('HELLO: the source backend', () => {
  it('sim is byte 0 (and decodes as absent), kvm byte 1; another value is refused at offset 14', () => {
    const sim = Buffer.from(encodeHello(hello));
    expect(sim[14]).toBe(0);
    expect(decodeHello(sim).backend).toBeUndefined();
    const kvm = Buffer.from(encodeHello({ ...hello, backend: 'kvm' }));
    expect(kvm[14]).toBe(1);
    expect(decodeHello(kvm).backend).toBe('kvm');
    kvm[14] = 2;
    let err: unknown;
    try {
      decodeHello(kvm);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FormatError);
    expect((err as FormatError).offset).toBe(14);
  });

  it('a sim destination refuses a kvm source in its HELLO_ACK, naming --backend', async () => {
    const [src, dst] = memoryChannelPair(MIGRATION_FRAME);
    let closed = 0;
    const dest = new MigrationDestination({
      channel: dst,
      peerTimeoutMs: 10_000,
      allocate: (n) => {
        const m = GuestMemory.create(n);
        const close = m.close.bind(m);
        m.close = () => {
          closed++;
          close();
        };
        return m;
      },
    });
    const run = dest.run();
    run.catch(() => {});
    await src.send(Msg.HELLO, encodeHello({ ...hello, backend: 'kvm' }));
    const ack = await src.next(10_000);
    expect(ack.type).toBe(Msg.HELLO_ACK);
    expect(decodeHelloAck(ack.payload).error).toMatch(
      /the source migrates a kvm guest; this destination receives sim guests \(run both sides with the same --backend\)/,
    );
    await expect(run).rejects.toThrow(/run both sides with the same --backend/);
    expect(closed).toBe(1);
    src.close();
  });
});
