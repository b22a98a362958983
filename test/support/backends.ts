/**
 * The hypercall backend of a test over either transport: the store in this
 * process ('inproc'), or a real `HostService` on a unix socket in `dir` with a
 * client forwarding to it ('unix'). `close` stops the client and the service
 * (the caller still owns and closes the store).
 */
import { join } from 'node:path';
import type { CbitStore } from '../../src/host/cbit-store.js';
import { HostServiceClient } from '../../src/host/service-client.js';
import { HostService } from '../../src/host/service-server.js';
import { InProcessBackend, SocketBackend } from '../../src/vmm/hypercall-backend.js';

export type TestTransport = 'inproc' | 'unix';

export async function openBackend(
  transport: TestTransport,
  store: CbitStore,
  dir: string,
): Promise<{ backend: InProcessBackend | SocketBackend; close: () => Promise<void> }> {
  if (transport === 'inproc') return { backend: new InProcessBackend(store), close: async () => {} };
  const service = await HostService.start({ store, socketPath: join(dir, 's.sock') });
  const client = await HostServiceClient.connect(join(dir, 's.sock'));
  return {
    backend: new SocketBackend(client),
    close: async () => {
      await client.close();
      await service.stop();
    },
  };
}
