import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerError } from '../../src/common/errors.js';
import { viewDigests } from '../../src/common/page-crypto.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { type FrameChannel, memoryChannelPair, SocketChannel } from '../../src/migration/channel.js';
import { MigrationDestination } from '../../src/migration/destination.js';
import { connectChannel } from '../../src/migration/endpoints.js';
import { FRAMES_PER_PIPELINE } from '../../src/migration/page-sender.js';
import { DEFAULT_PARAMS, migrateGuest } from '../../src/migration/run-migration.js';
import { MigrationRefusedError, MigrationSource } from '../../src/migration/source.js';
import type { SourceOptions } from '../../src/migration/source-types.js';
import { MIGRATION_FRAME, Msg } from '../../src/migration/stream.js';
import type { SourceGuest } from '../../src/vmm/backend.js';
import { InProcessBackend } from '../../src/vmm/hypercall-backend.js';
import { GuestMemory } from '../../src/vmm/sim/guest-memory.js';
import { ScriptedGuest } from '../../src/vmm/sim/scripted-guest.js';
import { ThreadedGuest } from '../../src/vmm/sim/threaded-guest.js';
import { VcpuPool } from '../../src/vmm/sim/vcpu-pool.js';
import { startCli, waitForStderr } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function scriptedSetup(npages = 256) {
  const store = CbitStore.open(join(tempDir(), 'h.db'), { synchronous: 'NORMAL' });
  store.registerVm(1, npages);
  const memory = GuestMemory.create(npages);
  const guest = new ScriptedGuest(memory, store, 1, 9, { workingSet: 64 });
  for (let i = 0; i < 100; i++) guest.step();
  cleanups.push(() => store.close());
  return { store, memory, guest };
}

/** A source of VM 1 over `channel`, in batches of 16 pages (several frames per round) unless `more` says otherwise. */
function sourceOver(
  guest: SourceGuest,
  store: CbitStore,
  channel: FrameChannel,
  more: Partial<SourceOptions> = {},
): MigrationSource {
  return new MigrationSource({
    ...DEFAULT_PARAMS,
    log: undefined,
    guest,
    store,
    vm: 1,
    channel,
    psp: DEFAULT_PARAMS.psp,
    batchPages: 16,
    ...more,
  });
}

/** The guest's state a failed migration must leave untouched. */
function snapshot(memory: GuestMemory, store: CbitStore) {
  return {
    digests: Buffer.from(
      viewDigests(memory.key, memory.bytes, memory.cbits.words, 0, memory.npages),
    ).toString('hex'),
    cbits: Array.from(memory.cbits.words),
    host: [...store.state(1).ranges()],
  };
}

describe('migration failure paths leave the source guest running and intact', () => {
  it('refuses a guest that has not set READY, unless forced', async () => {
    const { store, guest } = scriptedSetup();
    guest.kernel.prepareKexec();
    await expect(migrateGuest(DEFAULT_PARAMS, guest, store, 1)).rejects.toBeInstanceOf(MigrationRefusedError);
    await expect(migrateGuest(DEFAULT_PARAMS, guest, store, 1)).rejects.toThrow(
      /KVM_MIGRATION_READY.*--force-unsafe/,
    );
    const forced = await migrateGuest({ ...DEFAULT_PARAMS, forceUnsafe: true }, guest, store, 1);
    expect(forced.summary.verified).toBe(true);
  });

  it('a destination that cannot allocate the guest: abort, guest unpaused and unchanged', async () => {
    const { store, memory, guest } = scriptedSetup();
    const before = snapshot(memory, store);
    const attempt = migrateGuest(DEFAULT_PARAMS, guest, store, 1, {
      allocate: () => {
        throw new Error('out of memory');
      },
    });
    await expect(attempt).rejects.toThrow(
      /destination refused the migration: destination cannot allocate the guest \(256 pages\): out of memory/,
    );
    expect(guest.paused).toBe(false);
    expect(snapshot(memory, store)).toEqual(before);
  });

  it('a page corrupted in transit fails the PSP authentication: both sides abort, the source resumes', async () => {
    const { store, memory, guest } = scriptedSetup();
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    let sealedFrames = 0;
    // A man in the middle that flips one byte of the third sealed batch.
    const tampering: FrameChannel = {
      send: (type, payload) => a.send(type, payload),
      sendLent: async (type, buffer, length) => {
        if (type === Msg.PAGES_SEALED && ++sealedFrames === 3) {
          const copy = buffer.slice(0, length);
          copy[copy.length - 100] ^= 0xff;
          await a.send(type, copy);
          return buffer;
        }
        return a.sendLent(type, buffer, length);
      },
      next: (t) => a.next(t),
      stopReceiving: (reason) => a.stopReceiving(reason),
      close: () => a.close(),
    };
    const dest = new MigrationDestination({ channel: b, peerTimeoutMs: 5000 }).run();
    dest.catch(() => {});
    const source = sourceOver(guest, store, tampering);
    await expect(source.run()).rejects.toThrow(
      /destination aborted: PSP: sealed page for gfn \d+ .* failed authentication/,
    );
    await expect(dest).rejects.toThrow(/failed authentication/);
    expect(guest.paused).toBe(false);
    expect(memory.npages).toBe(256);
  });

  it('a destination cancelled mid-stream tells the source why: the source aborts naming it, its guest running', async () => {
    // Large enough that the frames the source may have in flight (its two
    // pipelines' buffers) are a small part of the round (128 frames).
    const npages = 2048;
    const { store, guest } = scriptedSetup(npages);
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const cancel = new AbortController();
    let frames = 0;
    // The operator's cancel lands while the source is still sending pages.
    const cancelling: FrameChannel = {
      ...a,
      sendLent: (type, buffer, length) => {
        if (++frames === 3) cancel.abort(new Error('cancelled by the operator'));
        return a.sendLent(type, buffer, length);
      },
    };
    const dest = new MigrationDestination({ channel: b, peerTimeoutMs: 5000, signal: cancel.signal }).run();
    dest.catch(() => {});
    const source = sourceOver(guest, store, cancelling);
    await expect(source.run()).rejects.toThrow(/the destination aborted: cancelled by the operator/);
    await expect(dest).rejects.toThrow('cancelled by the operator');
    // It stopped mid-round, not at the end: after the frame the cancel came
    // with, at most every buffer of both pipelines lent (none comes back
    // once the destination stops taking frames).
    expect(frames).toBeLessThanOrEqual(3 + 2 * FRAMES_PER_PIPELINE);
    expect(frames).toBeLessThan(npages / 16);
    expect(guest.paused).toBe(false);
  });

  it('a destination cancelled before the HELLO answers it with ABORT naming the cancel', async () => {
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const cancel = new AbortController();
    cancel.abort(new Error('cancelled by SIGTERM'));
    const dest = new MigrationDestination({ channel: b, peerTimeoutMs: 5000, signal: cancel.signal }).run();
    await expect(dest).rejects.toThrow('cancelled by SIGTERM');
    const reply = await a.next(1000);
    expect(reply.type).toBe(Msg.ABORT);
    expect(Buffer.from(reply.payload).toString()).toContain('cancelled by SIGTERM');
  });

  it('a bad frame on the wire: the destination aborts naming the offset and the expected magic', async () => {
    // A raw server: a listenChannel listener drops such a stray connection
    // itself (test/migration/endpoints.test.ts); this is the destination's own check.
    const sock = join(tempDir(), 'd.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(sock, r));
    cleanups.push(() => void server.close());
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const raw = net.connect(sock);
    const channel = new SocketChannel(await accepted, MIGRATION_FRAME, 5000);
    const dest = new MigrationDestination({ channel, peerTimeoutMs: 5000 }).run();
    const outcome = dest.then(
      () => 'resolved',
      (e: Error) => e.message,
    );
    raw.write(Buffer.alloc(40, 0x41));
    expect(await outcome).toMatch(
      /bad frame from the peer: migration stream frame: expected magic 0x474d5653 at offset 0, got 0x41414141/,
    );
    raw.destroy();
  });

  it('a malformed HELLO: the destination answers ABORT naming the field', async () => {
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    const dest = new MigrationDestination({ channel: b, peerTimeoutMs: 5000 }).run();
    const outcome = dest.then(
      () => 'resolved',
      (e: Error) => e.message,
    );
    await a.send(Msg.HELLO, new Uint8Array(8));
    expect(await outcome).toMatch(/HELLO: expected 4 more bytes for vcpus at offset 8, got 0/);
    const reply = await a.next(1000);
    expect(reply.type).toBe(Msg.ABORT);
  });

  it('the destination process killed mid-stream: the source aborts and its guest runs on, memory intact', async () => {
    const dir = tempDir();
    const sock = join(dir, 'dest.sock');
    // Killed on purpose, the destination cannot remove its temporary tracker:
    // it goes in this test's directory (its TMPDIR), not in /tmp.
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = dir;
    const dest = startCli(['migrate', '--role', 'destination', '--transport', 'unix', '--listen', sock]);
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    const child = dest.child;
    cleanups.push(async () => {
      child.kill('SIGKILL');
      await dest.exit;
    });
    await waitForStderr(dest, /destination listening on/);
    const channel = await connectChannel({ kind: 'unix', path: sock }, 5000);

    const npages = 4096;
    const store = CbitStore.open(join(dir, 'h.db'), { synchronous: 'NORMAL' });
    cleanups.push(() => store.close());
    store.registerVm(1, npages);
    const memory = GuestMemory.create(npages);
    const pool = VcpuPool.start({
      memory,
      backend: new InProcessBackend(store),
      vm: 1,
      vcpus: 2,
      workload: 'swiotlb',
      seed: 4,
      maxSteps: 50,
    });
    cleanups.push(() => pool.stop().then(() => {}));
    await pool.waitSetup();
    // Let the guest finish its writes so its memory is a fixed point to compare against.
    await waitFor(() => pool.stats().steps >= 100, 'both vCPUs to finish their 50 steps');
    const before = snapshot(memory, store);
    const guest = new ThreadedGuest(memory, pool);
    const source = sourceOver(guest, store, channel, {
      // A slow PSP keeps round 0 going (about 2 s) long after the cut.
      psp: { rate: 2000, batch: 1 },
      batchPages: 32,
      peerTimeoutMs: 5000,
      // Mid-stream: the destination dies once 256 of round 0's 4096 pages are out.
      onPages: (round, sent) => {
        if (round === 0 && sent >= 256 && !child.killed) child.kill('SIGKILL');
      },
    });
    const run = source.run();
    const err = await run.catch((e) => e);
    expect(err).toBeInstanceOf(PeerError);
    expect(String(err.message)).toMatch(/peer|closed|connection/);
    expect(guest.paused).toBe(false);
    expect(pool.paused).toBe(false);
    expect(snapshot(memory, store)).toEqual(before);
  });
});

describe('a cancel near the point of return', () => {
  /**
   * A migration of the scripted guest whose source channel runs `onDigests`
   * around sending DIGESTS; the destination takes the frame after the vCPU
   * state (the digests) only once that is done, so what `onDigests` does
   * happens while the digests are queued, not yet taken.
   */
  function aroundDigests(
    onDigests: (send: () => Promise<void>) => Promise<void>,
    destinationSignal: AbortSignal,
  ) {
    const { store, guest } = scriptedSetup();
    const [a, b] = memoryChannelPair(MIGRATION_FRAME);
    let digestsDone!: () => void;
    const digestsHandled = new Promise<void>((r) => {
      digestsDone = r;
    });
    let afterVmsa = false;
    const destinationSide: FrameChannel = {
      ...b,
      next: async (t, e) => {
        if (afterVmsa) await digestsHandled;
        const f = await b.next(t, e);
        if (f.type === Msg.VMSA) afterVmsa = true;
        return f;
      },
    };
    const sourceSide: FrameChannel = {
      ...a,
      send: async (type, payload) => {
        if (type !== Msg.DIGESTS) return a.send(type, payload);
        await onDigests(() => a.send(type, payload));
        digestsDone();
      },
    };
    const dest = new MigrationDestination({
      channel: destinationSide,
      peerTimeoutMs: 5000,
      signal: destinationSignal,
    }).run();
    dest.catch(() => {});
    return { guest, store, sourceSide, dest };
  }

  it('a source cancelled once its digests are out finishes the migration: verified, resumed at the destination', async () => {
    const cancel = new AbortController();
    const { guest, store, sourceSide, dest } = aroundDigests(async (send) => {
      await send();
      cancel.abort(new Error('cancelled at the source'));
    }, new AbortController().signal);
    const summary = await sourceOver(guest, store, sourceSide, { signal: cancel.signal }).run();
    expect(cancel.signal.aborted).toBe(true);
    expect(summary).toMatchObject({ verified: true, resumed: true, generationAfter: 1 });
    expect((await dest).resumed).toBe(true);
    // The source guest stays paused: it lives on at the destination now.
    expect(guest.paused).toBe(true);
  });

  it('a destination cancelled with the digests in (arrived, not yet taken) finishes the migration', async () => {
    const cancel = new AbortController();
    const { guest, store, sourceSide, dest } = aroundDigests(async (send) => {
      await send();
      cancel.abort(new Error('cancelled at the destination'));
    }, cancel.signal);
    const summary = await sourceOver(guest, store, sourceSide).run();
    expect(summary).toMatchObject({ verified: true, resumed: true });
    expect((await dest).resumed).toBe(true);
    expect(guest.paused).toBe(true);
  });

  it('a destination cancelled just before the digests arrive aborts: the source, already paused for good, is told and runs its guest on', async () => {
    const cancel = new AbortController();
    const { guest, store, sourceSide, dest } = aroundDigests(async (send) => {
      cancel.abort(new Error('cancelled at the destination'));
      await send(); // dropped: the destination takes no more frames
    }, cancel.signal);
    await expect(sourceOver(guest, store, sourceSide).run()).rejects.toThrow(
      /the destination aborted: cancelled at the destination/,
    );
    await expect(dest).rejects.toThrow('cancelled at the destination');
    expect(guest.paused).toBe(false);
  });
});
