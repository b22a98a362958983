/**
 * Dirty logging on real KVM loses no write, in the manner of KVM's own
 * dirty_log_test: the guest's vCPUs write the current iteration number to
 * random pages while the host harvests; after each harvest the host compares
 * every page with its copy. A changed page must be in this harvest, or, if
 * the write may have landed after the harvest, in the next one (it is
 * carried as owed); after the final, paused harvest nothing may be owed.
 * Runs with KVM_GET_DIRTY_LOG alone and with manual protect +
 * KVM_CLEAR_DIRTY_LOG, at CPL3 and CPL0. Skips, naming the reason, where
 * /dev/kvm is missing or unusable.
 */
import { describe, expect, it } from 'vitest';
import { PageBitmap } from '../../../src/common/page-bitmap.js';
import { PAGE_SIZE } from '../../../src/common/ranges.js';
import { kvmSkipReason } from '../../../src/vmm/kvm/availability.js';
import { GuestEvent } from '../../../src/vmm/kvm/control-page.js';
import { KvmGuest, type KvmProfile } from '../../../src/vmm/kvm/kvm-guest.js';
import { waitForEveryVcpu } from '../../../src/vmm/kvm/wait-for.js';
import { until } from './support.js';

interface Outcome {
  rounds: number;
  reported: number;
  owedCarried: number;
  stampsChecked: number;
}

/**
 * dropFinal: throw the paused round's harvest away, after the guest has
 * written since the last live one (a negative control: the check must fail).
 */
async function harvestRounds(
  profile: KvmProfile,
  manualProtect: boolean,
  rounds: number,
  dropFinal = false,
): Promise<Outcome> {
  const ramPages = 1024;
  const vcpus = 2;
  const guest = KvmGuest.create({ ramPages, vcpus, profile, workload: 'iterate', manualProtect, seed: 99n });
  const out: Outcome = { rounds, reported: 0, owedCarried: 0, stampsChecked: 0 };
  try {
    expect(guest.manualProtect).toBe(manualProtect);
    const copy = new Uint8Array(guest.ram.length);
    const booted = waitForEveryVcpu(guest, GuestEvent.booted, 'boot');
    guest.resume();
    await booted;
    // The first harvest takes everything written since the slot was made; copy after it.
    guest.harvestDirty(new PageBitmap(ramPages));
    copy.set(guest.ram);
    let owed = new Set<number>();
    const writes = () => [0, 1].reduce((s, v) => s + guest.control.counters(v).writes, 0n);
    const check = (dirty: PageBitmap, final: boolean) => {
      const nextOwed = new Set<number>();
      // gfn 0 is the control page, which the host writes too (unlogged by KVM).
      for (let gfn = 1; gfn < ramPages; gfn++) {
        const at = gfn * PAGE_SIZE;
        const now = guest.ram.subarray(at, at + PAGE_SIZE);
        const was = copy.subarray(at, at + PAGE_SIZE);
        if (dirty.test(gfn)) {
          copy.set(now, at);
          out.reported++;
        } else if (
          !Buffer.from(now.buffer, now.byteOffset, PAGE_SIZE).equals(
            Buffer.from(was.buffer, was.byteOffset, PAGE_SIZE),
          )
        ) {
          expect(owed.has(gfn), `gfn ${gfn} changed but was in neither this harvest nor the one before`).toBe(
            false,
          );
          expect(final, `gfn ${gfn} changed while paused without being reported`).toBe(false);
          nextOwed.add(gfn);
        }
      }
      for (const gfn of owed)
        expect(dirty.test(gfn), `owed gfn ${gfn} missing from the next harvest`).toBe(true);
      out.owedCarried += nextOwed.size;
      owed = nextOwed;
    };
    for (let round = 1; round <= rounds; round++) {
      guest.control.iteration = BigInt(round);
      const before = writes();
      await until(() => writes() > before + 50n, `guest writes in round ${round}`);
      const dirty = new PageBitmap(ramPages);
      guest.harvestDirty(dirty);
      check(dirty, false);
    }
    const before = writes();
    await until(() => writes() > before + 50n, 'guest writes before the pause');
    guest.pause();
    const dirty = new PageBitmap(ramPages);
    guest.harvestDirty(dirty);
    check(dropFinal ? new PageBitmap(ramPages) : dirty, true);
    // The stamps decrypt to an iteration the host gave and a real vCPU.
    const raw = new DataView(guest.ram.buffer);
    for (let gfn = 64; gfn < ramPages; gfn++) {
      if (raw.getBigUint64(gfn * PAGE_SIZE, true) === 0n) continue; // never written
      const word = new DataView(guest.guestView(gfn).buffer).getBigUint64(0, true);
      const iteration = word >> 40n;
      const vcpu = (word >> 32n) & 0xffn;
      expect(iteration <= BigInt(rounds) && vcpu < 2n, `stamp 0x${word.toString(16)} at gfn ${gfn}`).toBe(
        true,
      );
      out.stampsChecked++;
    }
    return out;
  } finally {
    guest.close();
  }
}

const skip = kvmSkipReason();
if (skip) console.warn(`kvm tests skipped: ${skip}`);
const skipCpl0 = kvmSkipReason('cpl0');

describe('dirty log under concurrent vCPU writes', () => {
  for (const manualProtect of [false, true]) {
    const mode = manualProtect ? 'manual protect + KVM_CLEAR_DIRTY_LOG' : 'KVM_GET_DIRTY_LOG';
    it.skipIf(skip)(`cpl3, ${mode}: no write is lost`, async () => {
      const o = await harvestRounds('cpl3', manualProtect, 12);
      expect(o.reported).toBeGreaterThan(0);
      expect(o.stampsChecked).toBeGreaterThan(0);
    });
  }
  it.skipIf(skip)('the check catches a harvest that was thrown away', async () => {
    await expect(harvestRounds('cpl3', true, 4, true)).rejects.toThrow(/gfn \d+ changed/);
  });
  it.skipIf(skipCpl0)('cpl0, manual protect + KVM_CLEAR_DIRTY_LOG: no write is lost', async () => {
    const o = await harvestRounds('cpl0', true, 4);
    expect(o.reported).toBeGreaterThan(0);
  });
});
