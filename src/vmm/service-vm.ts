/**
 * A VMM whose tracker is a running `sevtrack serve` (docs/host-protocol.md):
 * connects to its socket, makes sure the service tracks the guest under the
 * operator's VM id, and forwards the guest's exits there (SocketBackend: the
 * exit rings are released only once the service acknowledged, after its
 * commit).
 *
 * The VM id, as an operator expects it of a VMM that boots the guest: an id
 * the service does not know is registered with this guest's size and
 * initial state; an id registered with the same size and initial state and
 * no change yet (registered ahead by the operator) is taken over; any other
 * registered id belongs to another guest and is refused, changing nothing.
 */
import { InvalidArgumentError, RuntimeFailure } from '../common/errors.js';
import { HostServiceClient } from '../host/service-client.js';
import { SocketBackend } from './hypercall-backend.js';

/** The host service could not be reached at all. */
export class ServiceUnavailableError extends RuntimeFailure {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_SERVICE_UNAVAILABLE', message, options);
  }
}

export interface ServiceVm {
  client: HostServiceClient;
  backend: SocketBackend;
  vm: number;
  /** Whether this VMM registered the VM (false: it was registered ahead, unchanged). */
  registered: boolean;
}

/**
 * Connects to the service at `socket`. A path with nothing there is bad
 * input (InvalidArgumentError naming --service); a socket nobody listens on
 * is ServiceUnavailableError.
 */
export async function connectService(socket: string): Promise<HostServiceClient> {
  try {
    return await HostServiceClient.connect(socket);
  } catch (err) {
    const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ENOENT' || code === 'ENOTSOCK' || code === 'ENOTDIR')
      throw new InvalidArgumentError(
        '--service',
        `--service ${socket}: no socket there (${code}); pass the --socket path of a running \`sevtrack serve\``,
      );
    throw new ServiceUnavailableError(
      `--service ${socket}: the host service does not answer (${(err as Error).message}); start \`sevtrack serve --socket ${socket}\` or fix the path`,
      { cause: err },
    );
  }
}

/**
 * Registers vm (or takes over a fresh registration of the same shape) on a
 * connected service and returns the backend that forwards the guest's exits.
 */
export async function attachServiceVm(
  client: HostServiceClient,
  vm: number,
  npages: number,
  initialEncrypted: boolean,
): Promise<ServiceVm> {
  const known = await client.listVms();
  if (!known.includes(vm)) {
    await client.registerVm(vm, npages, initialEncrypted);
    return { client, backend: new SocketBackend(client), vm, registered: true };
  }
  const s = await client.queryVm(vm);
  const state = (encrypted: boolean) => (encrypted ? 'encrypted' : 'shared');
  if (s.npages !== npages || s.initialEncrypted !== initialEncrypted || s.lastSeq !== 0) {
    throw new InvalidArgumentError(
      '--vm',
      `--vm ${vm} is already registered with the service (${s.npages} pages, initially ${state(s.initialEncrypted)}, ${s.lastSeq} changes): ` +
        `it tracks another guest, and this ${npages}-page guest (initially ${state(initialEncrypted)}) would corrupt it; pass an id the service does not track (or one registered ahead with this size and no change)`,
    );
  }
  if (s.migrationControl !== 0n)
    throw new InvalidArgumentError(
      '--vm',
      `--vm ${vm} is registered with KVM_MIGRATION_READY already set, so another guest reports to it; pass another id`,
    );
  return { client, backend: new SocketBackend(client), vm, registered: false };
}
