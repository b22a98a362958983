/**
 * The error tree. Every error sevtrack throws is a SevtrackError with a stable
 * `code`; MisuseError means the caller passed bad input (fix the input),
 * RuntimeFailure means something broke at run time (an invariant, a peer, the
 * platform). The CLI maps the first to exit code 2 and the second to 3.
 */
export class SevtrackError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad input: a flag, a field, a frame, a file. Nothing was changed. */
export class MisuseError extends SevtrackError {}

/** A value of a named field is wrong; the message says which and how to fix it. */
export class InvalidArgumentError extends MisuseError {
  readonly field: string;
  constructor(field: string, message: string) {
    super('ERR_INVALID_ARGUMENT', message);
    this.field = field;
  }
}

/**
 * A destination set up for one guest (its `--memory`) was offered another:
 * the flags of one side are wrong, so it is refused as bad input (exit 2).
 */
export class GuestMismatchError extends InvalidArgumentError {}

/** A binary buffer or file is not in the expected format. */
export class FormatError extends MisuseError {
  readonly offset: number;
  constructor(what: string, offset: number, expected: string, got: string) {
    super('ERR_BAD_FORMAT', `${what}: expected ${expected} at offset ${offset}, got ${got}`);
    this.offset = offset;
  }
}

/** Something failed while running: a broken invariant, a dead peer, the platform. */
export class RuntimeFailure extends SevtrackError {}

/** The operator cancelled a run (SIGINT/SIGTERM, or an AbortSignal): it stopped cleanly, as an abort does. */
export class CancelledError extends RuntimeFailure {
  constructor(message: string) {
    super('ERR_CANCELLED', message);
  }
}

/** The native addon could not be found; the message lists the paths tried. */
export class NativeAddonMissingError extends RuntimeFailure {
  readonly pathsTried: readonly string[];
  constructor(pathsTried: readonly string[]) {
    super(
      'ERR_NATIVE_MISSING',
      `the native addon sevtrack_native.node was not found (tried ${pathsTried.join(', ')}); build it with \`npm run build\` (or \`npx node-gyp rebuild\`)`,
    );
    this.pathsTried = pathsTried;
  }
}

/** An internal invariant did not hold: a bug, never the caller's fault. */
export class InvariantError extends RuntimeFailure {
  constructor(message: string) {
    super('ERR_INVARIANT', message);
  }
}

/** A VM id that was never registered with the host service. */
export class UnknownVmError extends MisuseError {
  readonly vmId: number;
  constructor(vmId: number) {
    super('ERR_UNKNOWN_VM', `vm ${vmId} is not registered; register it first (REGISTER_VM)`);
    this.vmId = vmId;
  }
}

/** A database file that is not SQLite, not sevtrack's, or of a newer schema. */
export class DatabaseFormatError extends MisuseError {
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super('ERR_BAD_DATABASE', `${path}: ${message}`, options);
    this.path = path;
  }
}

/** A peer closed the connection or broke the protocol. */
export class PeerError extends RuntimeFailure {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PEER', message, options);
  }
}

/**
 * The kvm backend cannot run on this host: /dev/kvm is missing, not
 * accessible, or not usable for what sevtrack needs; `reason` says which
 * (`sevtrack doctor` shows the whole probe).
 */
export class KvmUnavailableError extends RuntimeFailure {
  readonly reason: string;
  constructor(reason: string) {
    super('ERR_KVM_UNAVAILABLE', `the kvm backend is unavailable: ${reason}`);
    this.reason = reason;
  }
}

/**
 * A KVM system call failed or a VM stopped: the message names what failed,
 * on what, and the errno (`ioctl(KVM_GET_DIRTY_LOG) on slot 0 failed: EINVAL`).
 */
export class KvmError extends RuntimeFailure {
  readonly errno: number | undefined;
  readonly errnoName: string | undefined;
  constructor(message: string, errno?: number, errnoName?: string, options?: { cause?: unknown }) {
    super('ERR_KVM', message, options);
    this.errno = errno;
    this.errnoName = errnoName;
  }
}
