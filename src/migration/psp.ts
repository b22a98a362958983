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
 * KVM); `rate` (pages/s) and `batch` (pages per call) model that limit.
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
import { openPages, SEALED_PAGE_BYTES, sealPages, xtsGather, xtsScatter } from '../common/page-crypto.js';
import { PAGE_SIZE } from '../common/ranges.js';

export interface PspLimits {
  /** Pages per second the PSP processes (0 = unlimited). */
  rate: number;
  /** Pages per firmware call (KVM allows 1; Hygon's batch mode more). */
  batch: number;
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
  private budgetStart = 0;
  private budgetPages = 0;
  private finished = false;

  constructor(
    private readonly memoryKey: Uint8Array,
    readonly limits: PspLimits = UNLIMITED_PSP,
  ) {
    if (limits.batch < 1)
      throw new InvalidArgumentError('--psp-batch', `--psp-batch ${limits.batch} must be at least 1`);
    if (limits.rate < 0)
      throw new InvalidArgumentError('--psp-rate', `--psp-rate ${limits.rate} must not be negative`);
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
    this.finished = true;
    return this.nextSeq;
  }

  /** SEND_UPDATE_VMSA: seals one page of vCPU state per vCPU (ids are the vCPU indices). */
  sendUpdateVmsa(vmsa: Uint8Array, vcpuIds: Float64Array): { firstSeq: number; sealed: Uint8Array } {
    return this.seal(vmsa, vcpuIds);
  }

  /** RECEIVE_UPDATE_VMSA: opens the vCPU states. */
  receiveUpdateVmsa(vcpuIds: Float64Array, firstSeq: number, sealed: Uint8Array): Uint8Array {
    return this.open(vcpuIds, firstSeq, sealed);
  }

  private derive(peerPublicKey: Uint8Array, context: string): void {
    const shared = diffieHellman({ privateKey: this.privateKey, publicKey: publicKeyFromRaw(peerPublicKey) });
    this.transportKey = new Uint8Array(
      hkdfSync('sha256', shared, Buffer.alloc(0), `sevtrack psp transport ${context}`, 32),
    );
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

  /** Waits as a rate-limited PSP would before processing n more pages. */
  async throttle(n: number): Promise<void> {
    if (this.limits.rate <= 0) return;
    const now = performance.now();
    if (this.budgetStart === 0) this.budgetStart = now;
    this.budgetPages += n;
    const due = this.budgetStart + (this.budgetPages / this.limits.rate) * 1000;
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
  }

  /**
   * SEND_UPDATE_DATA for pages `gfns` of memory: decrypts with the VM key
   * and seals each with the transport key. Returns the sealed bytes and the
   * first sequence number used.
   */
  sendUpdateData(memory: Uint8Array, gfns: Float64Array): { firstSeq: number; sealed: Uint8Array } {
    const plain = new Uint8Array(gfns.length * PAGE_SIZE);
    xtsGather(this.memoryKey, false, memory, plain, gfns);
    return this.seal(plain, gfns);
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
    const plain = this.open(gfns, firstSeq, sealed);
    xtsScatter(this.memoryKey, true, plain, memory, gfns);
    plain.fill(0);
  }

  /** Opens sealed pages into plaintext, checking sequence and authentication. */
  private open(gfns: Float64Array, firstSeq: number, sealed: Uint8Array): Uint8Array {
    if (firstSeq !== this.nextSeq) {
      throw new RuntimeFailure(
        'ERR_PSP_SEQUENCE',
        `PSP: expected sealed page sequence ${this.nextSeq}, got ${firstSeq}`,
      );
    }
    const plain = new Uint8Array(gfns.length * PAGE_SIZE);
    const bad = openPages(
      this.key(),
      sealed,
      plain,
      gfns.map((g) => g * PAGE_SIZE),
      firstSeq,
    );
    if (bad >= 0) {
      throw new RuntimeFailure(
        'ERR_PSP_AUTH',
        `PSP: sealed page for gfn ${gfns[bad]} (sequence ${firstSeq + bad}) failed authentication`,
      );
    }
    this.nextSeq += gfns.length;
    return plain;
  }
}
