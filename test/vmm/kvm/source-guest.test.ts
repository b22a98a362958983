/**
 * A KVM guest as the migration engine's source (KvmSourceGuest, KvmMemory)
 * on real KVM: pause() lands between two workload operations, so after every
 * pause the tracker fed from the exits equals the guest's own c-bit table
 * (a pause between a table update and its hypercall would not); resume()
 * lets go of the stop word and the guest runs on; a stop issued right after
 * a resume reaches every vCPU (the word is an epoch, so a vCPU that never
 * ran in between still sees a new stop); dirtyCount() loses no dirty
 * page (what it harvested comes out of the next harvestDirty()); the
 * memory's codec decrypts what the guest stored. Skips, naming the reason,
 * without a usable /dev/kvm.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KVM_MIGRATION_READY } from '../../../src/common/kvm-abi.js';
import { PageBitmap } from '../../../src/common/page-bitmap.js';
import { viewMacs } from '../../../src/common/page-crypto.js';
import { CbitStore } from '../../../src/host/cbit-store.js';
import { kvmSkipReason } from '../../../src/vmm/kvm/availability.js';
import { GuestEvent } from '../../../src/vmm/kvm/control-page.js';
import { KvmGuest } from '../../../src/vmm/kvm/kvm-guest.js';
import { guestCbits } from '../../../src/vmm/kvm/kvm-memory.js';
import { KvmSourceGuest, stopAtCleanPoint } from '../../../src/vmm/kvm/source-guest.js';
import { TrackerLink } from '../../../src/vmm/kvm/tracker-link.js';
import { waitForEveryVcpu } from '../../../src/vmm/kvm/wait-for.js';
import { tempDir } from '../../support/tmp.js';
import { until } from './support.js';

const NPAGES = 1024;
const skip = kvmSkipReason();
if (skip) console.warn(`kvm tests skipped: ${skip}`);

async function booted(workload: 'churn' | 'write-heavy') {
  const store = CbitStore.open(join(tempDir(), 'src.db'));
  store.registerVm(1, NPAGES, { initialEncrypted: true });
  const vm = KvmGuest.create({ ramPages: NPAGES, vcpus: 2, profile: 'cpl3', workload, seed: 11n });
  const link = new TrackerLink(vm, store, 1);
  const up = waitForEveryVcpu(vm, GuestEvent.booted, 'boot');
  vm.resume();
  await up;
  const close = () => {
    link.close();
    vm.close();
    store.close();
  };
  return { store, vm, link, guest: new KvmSourceGuest(vm, link), close };
}

describe('kvm: the source guest of a migration', () => {
  it.skipIf(skip)(
    'every pause lands at a clean point: the tracker equals the guest table; resume runs on',
    async () => {
      const { store, vm, link, guest, close } = await booted('churn');
      try {
        expect(store.migrationControl(1)).toBe(KVM_MIGRATION_READY); // the READY event
        for (let i = 0; i < 6; i++) {
          const before = link.applied;
          await until(() => link.applied > before + 10, 'conversions');
          await guest.pause();
          expect(guest.paused).toBe(true);
          await guest.drainExits();
          const state = store.state(1);
          const table = guest.memory.cbits;
          const differ: number[] = [];
          for (let g = 0; g < NPAGES; g++) if (state.isEncrypted(g) !== table.test(g)) differ.push(g);
          expect(differ).toEqual([]);
          const progress = vm.control.counters(0).progress;
          guest.resume();
          await until(() => vm.control.counters(0).progress > progress, 'progress after resume');
        }
      } finally {
        close();
      }
    },
  );

  it.skipIf(skip)(
    "dirtyCount() loses no page; the codec reads the guest's view; two pages of state per vCPU",
    async () => {
      const { vm, guest, close } = await booted('write-heavy');
      try {
        const memory = guest.memory;
        memory.harvestDirty(new PageBitmap(NPAGES));
        await until(() => vm.control.counters(1).writes > 200n, 'writes');
        await guest.pause();
        const counted = memory.dirtyCount();
        expect(counted).toBeGreaterThan(0);
        expect(memory.dirtyCount()).toBe(counted); // nothing written while paused, nothing forgotten
        const out = new PageBitmap(NPAGES);
        expect(memory.harvestDirty(out)).toBe(counted);
        expect(out.count()).toBe(counted);
        expect(memory.harvestDirty(new PageBitmap(NPAGES))).toBe(0);
        expect(memory.written.count()).toBe(NPAGES);
        expect(memory.codec.cipher).toBe('keystream');
        // The view MACs under the memory's codec are the MACs of the guest's own view.
        const key = new Uint8Array(16).fill(9);
        const macs = viewMacs(memory.codec, key, memory.bytes, guestCbits(vm).words, 0, NPAGES);
        for (const g of [0, 100, 700, NPAGES - 1]) {
          // The guest's view at its own gfn, hashed as a shared page: the MAC of that plaintext at that GPA.
          const shifted = new Uint8Array((g + 1) * 4096);
          shifted.set(vm.guestView(g), g * 4096);
          const want = viewMacs(memory.codec, key, shifted, new PageBitmap(g + 1).words, g, 1);
          expect(Buffer.from(macs.subarray(g * 16, g * 16 + 16)).equals(Buffer.from(want))).toBe(true);
        }
        expect(guest.vcpuState().length).toBe(2 * 2 * 4096);
      } finally {
        close();
      }
    },
  );

  it.skipIf(skip)(
    'a stop right after a resume reaches every vCPU, even one that never ran in between (the stop word is an epoch)',
    async () => {
      // 4 vCPUs on a machine of 2 cores: some vCPU is usually not scheduled
      // between a let-go and the next stop. With a 0/1 stop flag it spun on,
      // never saw the flag drop and never answered the next stop.
      const vm = KvmGuest.create({
        ramPages: NPAGES,
        vcpus: 4,
        profile: 'cpl3',
        workload: 'churn',
        seed: 5n,
      });
      try {
        const up = waitForEveryVcpu(vm, GuestEvent.booted, 'boot');
        vm.resume();
        await up;
        const answered: bigint[] = [];
        const off = vm.onBatch((b) => {
          for (const e of b.events) if (e.event === GuestEvent.stopped) answered.push(e.arg);
        });
        let last = 0n;
        for (let i = 0; i < 40; i++) {
          await stopAtCleanPoint(vm, 10_000);
          const epoch = vm.control.stopWord;
          expect(epoch % 2n).toBe(1n);
          expect(epoch).toBeGreaterThan(last);
          last = epoch;
          vm.control.releaseStop();
          expect(vm.control.stopWord).toBe(epoch + 1n);
          vm.resume();
        }
        off();
        // Each stop was answered by every vCPU with its own epoch.
        expect(answered.length).toBe(40 * 4);
        expect(new Set(answered).size).toBe(40);
      } finally {
        vm.close();
      }
    },
  );
});
