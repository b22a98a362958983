/**
 * The PSP model (docs/design.md §4): the SEV firmware commands a VMM uses to move
 * encrypted pages. SEND_START and RECEIVE_START agree a transport key with a
 * real X25519 key exchange and HKDF-SHA256; SEND_UPDATE_DATA decrypts pages
 * with the source VM's memory key and seals them (AES-256-GCM, GPA and
 * sequence number as associated data); RECEIVE_UPDATE_DATA opens them and
 * encrypts them with the destination VM's own, different key.
 * SEND_UPDATE_VMSA carries SEV-ES vCPU state through the same sealed path.
 *
 * A real PSP is slow (350-450 pages/s, one page per SEND_UPDATE_DATA call on
 * KVM), and most of a one-page call is the command itself (mailbox, cache
 * flushes), not the page: Hygon's batch command amortizes it. The model: a
 * firmware call of n pages occupies the PSP for callCost + n * pageCost, with
 * callCost + pageCost = 1 / rate (`rate` is pages/s at one page per call) and
 * callCost = callShare of that (default 0.8). So batch 1 runs at `rate`, batch
 * 64 at ~4.7x, and no batch beats 1 / pageCost = 5x `rate`.
 *
 * The limiter keeps the time the PSP is busy until: a call starts at
 * max(now, busyUntil), so time the PSP sat idle is never banked and a burst
 * after an idle spell runs no faster than the firmware would.
 */
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
} from 'node:crypto';
import { InvalidArgumentError, RuntimeFailure } from '../common/errors.js';
import {
  type MacOutput,
  type MemoryKey,
  openFrameToPages,
  openPages,
  SEALED_PAGE_BYTES,
  sealPages,
  sealPagesToFrame,
  xtsScatter,
} from '../common/page-crypto.js';
import { PAGE_SIZE } from '../common/ranges.js';

export interface PspLimits {
  /** Pages per second the PSP processes at one page per call (0 = unlimited). */
  rate: number;
  /** Pages per firmware call (KVM allows 1; Hygon's batch mode more). */
  batch: number;
  /** The share of a one-page call's time that is per-call cost, in [0, 1) (default DEFAULT_CALL_SHARE). */
  callShare?: number;
}

/** Share of a one-page SEND_UPDATE_DATA that is the command, not the page. */
export const DEFAULT_CALL_SHARE = 0.8;

/** Time source of the rate limiter (tests drive a virtual one). */
export interface PspClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const REAL_CLOCK: PspClock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

/** Milliseconds one firmware call of n pages occupies a PSP with these limits (0 when unlimited). */
export function pspCallMs(limits: PspLimits, n: number): number {
  if (limits.rate <= 0) return 0;
  const single = 1000 / limits.rate;
  const share = limits.callShare ?? DEFAULT_CALL_SHARE;
  return single * share + n * single * (1 - share);
}

export const UNLIMITED_PSP: PspLimits = { rate: 0, batch: 4096 };

/** The raw 32-byte X25519 public key of a key pair (for the wire). */
function rawPublicKey(key: KeyObject): Uint8Array {
  const der = key.export({ type: 'spki', format: 'der' });
  return new Uint8Array(der.subarray(der.length - 32));
}

const SPKI_X25519_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32)
    throw new InvalidArgumentError('public key', `an X25519 public key is 32 bytes, got ${raw.length}`);
  return createPublicKey({ key: Buffer.concat([SPKI_X25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

/** One side of the transport-key agreement. */
export class PspSession {
  private readonly privateKey: KeyObject;
  readonly publicKey: Uint8Array;
  private transportKey: Uint8Array | undefined;
  private nextSeq = 0;
  private busyUntil = Number.NEGATIVE_INFINITY;
  private finished = false;
  private shared: Buffer | undefined;

  constructor(
    /** The VM's memory key and model (a bare key: the sim backend's AES-XTS). */
    private readonly memoryKey: MemoryKey,
    readonly limits: PspLimits = UNLIMITED_PSP,
    private readonly clock: PspClock = REAL_CLOCK,
  ) {
    if (limits.batch < 1)
      throw new InvalidArgumentError('--psp-batch', `--psp-batch ${limits.batch} must be at least 1`);
    if (limits.rate < 0)
      throw new InvalidArgumentError('--psp-rate', `--psp-rate ${limits.rate} must not be negative`);
    const share = limits.callShare ?? DEFAULT_CALL_SHARE;
    if (!(share >= 0 && share < 1))
      throw new InvalidArgumentError('callShare', `PSP callShare ${share} must be in [0, 1)`);
    const pair = generateKeyPairSync('x25519');
    this.privateKey = createPrivateKey(pair.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    this.publicKey = rawPublicKey(pair.publicKey);
  }

  /** SEND_START: derives the transport key from the destination PSP's public key. */
  sendStart(peerPublicKey: Uint8Array): void {
    this.derive(peerPublicKey, 'v1');
  }

  /** RECEIVE_START: derives the transport key from the source PSP's public key. */
  receiveStart(peerPublicKey: Uint8Array): void {
    this.derive(peerPublicKey, 'v1');
  }

  /**
   * SEND_FINISH / RECEIVE_FINISH: forgets the transport key; no page can be
   * sealed or opened afterwards. Returns how many pages (and VMSAs) went through.
   */
  finish(): number {
    this.transportKey?.fill(0);
    this.transportKey = undefined;
    this.shared?.fill(0);
    this.shared = undefined;
    this.finished = true;
    return this.nextSeq;
  }

  /** SEND_UPDATE_VMSA: seals the pages of vCPU state (ids 0.., the same number of pages per vCPU in vCPU order). */
  sendUpdateVmsa(vmsa: Uint8Array, vcpuIds: Float64Array): { firstSeq: number; sealed: Uint8Array } {
    return this.seal(vmsa, vcpuIds);
  }

  /** RECEIVE_UPDATE_VMSA: opens the vCPU states. */
  receiveUpdateVmsa(vcpuIds: Float64Array, firstSeq: number, sealed: Uint8Array): Uint8Array {
    return this.open(vcpuIds, firstSeq, sealed);
  }

  private derive(peerPublicKey: Uint8Array, context: string): void {
    this.shared = diffieHellman({ privateKey: this.privateKey, publicKey: publicKeyFromRaw(peerPublicKey) });
    this.transportKey = new Uint8Array(
      hkdfSync('sha256', this.shared, Buffer.alloc(0), `sevtrack psp transport ${context}`, 32),
    );
  }

  /**
   * The view-MAC key (16 bytes) for verification digests (page-crypto
   * viewMacs): derived from the same key agreement as the transport key
   * with its own HKDF label, so source and destination hold the same key
   * after START without sending it, and nobody else (the guest included)
   * knows it. Call after START and before FINISH.
   */
  viewMacKey(): Uint8Array {
    this.key(); // START has run, FINISH has not
    return new Uint8Array(hkdfSync('sha256', this.shared!, Buffer.alloc(0), 'sevtrack view mac v1', 16));
  }

  private key(): Uint8Array {
    if (this.finished) {
      throw new RuntimeFailure('ERR_PSP_STATE', 'PSP: the session is finished (SEND_FINISH/RECEIVE_FINISH)');
    }
    if (!this.transportKey) {
      throw new RuntimeFailure('ERR_PSP_STATE', 'PSP: SEND_START/RECEIVE_START has not run');
    }
    return this.transportKey;
  }

  /**
   * Waits as a rate-limited PSP would to process n more pages: in firmware
   * calls of at most `limits.batch` pages, each occupying the PSP for
   * pspCallMs(limits, pages) from max(now, the end of the previous call).
   * Resolves when the last call is done. Idle time is never banked.
   */
  async throttle(n: number): Promise<void> {
    if (this.limits.rate <= 0 || n <= 0) return;
    for (let left = n; left > 0; left -= this.limits.batch) {
      const start = Math.max(this.clock.now(), this.busyUntil);
      this.busyUntil = start + pspCallMs(this.limits, Math.min(left, this.limits.batch));
    }
    const wait = this.busyUntil - this.clock.now();
    if (wait > 0) await this.clock.sleep(wait);
  }

  /**
   * SEND_UPDATE_DATA for pages `gfns` of memory: decrypts with the VM key
   * and seals each with the transport key. Returns the sealed bytes and the
   * first sequence number used.
   */
  sendUpdateData(memory: Uint8Array, gfns: Float64Array): { firstSeq: number; sealed: Uint8Array } {
    const sealed = new Uint8Array(gfns.length * SEALED_PAGE_BYTES);
    return { firstSeq: this.sendUpdateDataInto(memory, gfns, sealed, 0), sealed };
  }

  /**
   * SEND_UPDATE_DATA straight into a frame: pages `gfns` of memory are
   * decrypted with the VM key and sealed into `frame` at offset + i * 4112,
   * with no intermediate buffer (the plaintext lives in one native scratch
   * page, wiped per call). With `macs`, the view MAC of each page's
   * plaintext (its guest view) is written in the same pass. Returns the first
   * sequence number used.
   */
  sendUpdateDataInto(
    memory: Uint8Array,
    gfns: Float64Array,
    frame: Uint8Array,
    offset: number,
    macs?: MacOutput,
  ): number {
    const firstSeq = this.nextSeq;
    sealPagesToFrame(this.memoryKey, this.key(), memory, gfns, firstSeq, frame, offset, macs);
    this.nextSeq += gfns.length;
    return firstSeq;
  }

  /**
   * RECEIVE_UPDATE_DATA straight from a frame into memory: sealed pages at
   * offset + i * 4112 are opened and encrypted with this VM's key into pages
   * gfns[i]. Throws on a sequence gap (nothing written) or a page that fails
   * authentication (the pages before it are written: the caller discards the
   * guest, as the destination does on any failure). With `macs`, the view MAC
   * of each plaintext in the same pass.
   */
  receiveUpdateDataFrom(
    memory: Uint8Array,
    gfns: Float64Array,
    firstSeq: number,
    frame: Uint8Array,
    offset: number,
    macs?: MacOutput,
  ): void {
    this.checkSequence(firstSeq);
    const bad = openFrameToPages(this.key(), this.memoryKey, frame, offset, gfns, firstSeq, memory, macs);
    if (bad >= 0) this.authFailure(gfns, firstSeq, bad);
    this.nextSeq += gfns.length;
  }

  private checkSequence(firstSeq: number): void {
    if (firstSeq !== this.nextSeq) {
      throw new RuntimeFailure(
        'ERR_PSP_SEQUENCE',
        `PSP: expected sealed page sequence ${this.nextSeq}, got ${firstSeq}`,
      );
    }
  }

  private authFailure(gfns: Float64Array, firstSeq: number, bad: number): never {
    throw new RuntimeFailure(
      'ERR_PSP_AUTH',
      `PSP: sealed page for gfn ${gfns[bad]} (sequence ${firstSeq + bad}) failed authentication`,
    );
  }

  /** Seals plaintext pages (i at gpa gfns[i] * 4096) with the next sequence numbers. */
  private seal(plain: Uint8Array, gfns: Float64Array): { firstSeq: number; sealed: Uint8Array } {
    const sealed = new Uint8Array(gfns.length * SEALED_PAGE_BYTES);
    const gpas = gfns.map((g) => g * PAGE_SIZE);
    const firstSeq = this.nextSeq;
    sealPages(this.key(), plain, sealed, gpas, firstSeq);
    this.nextSeq += gfns.length;
    plain.fill(0); // plaintext never outlives the firmware call
    return { firstSeq, sealed };
  }

  /**
   * RECEIVE_UPDATE_DATA: opens the sealed pages and encrypts them into memory
   * with this VM's key. Throws if any page fails authentication or arrives
   * out of sequence; memory is then unchanged.
   */
  receiveUpdateData(memory: Uint8Array, gfns: Float64Array, firstSeq: number, sealed: Uint8Array): void {
    const m = this.memoryKey;
    if (!(m instanceof Uint8Array))
      throw new InvalidArgumentError(
        'memory',
        `receiveUpdateData writes AES-XTS memory; a ${m.cipher} guest receives through receiveUpdateDataFrom`,
      );
    const plain = this.open(gfns, firstSeq, sealed);
    xtsScatter(m, true, plain, memory, gfns);
    plain.fill(0);
  }

  /** Opens sealed pages into plaintext, checking sequence and authentication. */
  private open(gfns: Float64Array, firstSeq: number, sealed: Uint8Array): Uint8Array {
    this.checkSequence(firstSeq);
    const plain = new Uint8Array(gfns.length * PAGE_SIZE);
    const bad = openPages(
      this.key(),
      sealed,
      plain,
      gfns.map((g) => g * PAGE_SIZE),
      firstSeq,
    );
    if (bad >= 0) this.authFailure(gfns, firstSeq, bad);
    this.nextSeq += gfns.length;
    return plain;
  }
}
