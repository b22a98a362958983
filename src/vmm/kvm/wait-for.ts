/**
 * Waiting on a KVM guest's record batches: resolves on the first batch for
 * which `done` returns true, rejects with KvmError when a vCPU fails (the
 * native message names the vCPU and why) or when timeoutMs passes (an upper
 * bound against a hang, never used as synchronisation).
 */
import { KvmError } from '../../common/errors.js';
import type { KvmGuest, RecordBatch } from './kvm-guest.js';

export function waitForBatch(
  guest: KvmGuest,
  done: (batch: RecordBatch) => boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const finish = () => {
      clearTimeout(timer);
      off();
    };
    const timer = setTimeout(() => {
      finish();
      reject(new KvmError(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    const off = guest.onBatch((batch) => {
      if (batch.failures.length > 0) {
        finish();
        reject(new KvmError(`the guest failed while waiting for ${what}: ${batch.failures.join('; ')}`));
      } else if (done(batch)) {
        finish();
        resolve();
      }
    });
  });
}

/** Resolves once every vCPU has sent `event` (with an argument accepted by `arg`, if given). */
export function waitForEveryVcpu(
  guest: KvmGuest,
  event: number,
  what: string,
  arg?: (value: bigint) => boolean,
  timeoutMs?: number,
): Promise<void> {
  const seen = new Set<number>();
  return waitForBatch(
    guest,
    (batch) => {
      for (const e of batch.events) if (e.event === event && (!arg || arg(e.arg))) seen.add(e.vcpu);
      return seen.size === guest.vcpus;
    },
    what,
    timeoutMs,
  );
}
