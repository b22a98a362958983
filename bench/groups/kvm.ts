/**
 * The kvm backend on this host's /dev/kvm (KVM-PVM or VMX/SVM), each figure
 * against a limit measured in the same run:
 * - shim exits/s per profile: the guest helper's MAP_GPA_RANGE calls,
 *   validated natively, queued, drained in batches into a real CbitStore
 *   (SQLite, one commit per batch), against a bare `out` loop whose exits
 *   are only queued (the cost of the exit itself);
 * - KVM_GET_DIRTY_LOG (and + KVM_CLEAR_DIRTY_LOG) for a 1 GiB slot at ~1%
 *   and ~10% dirty, against the sim backend's harvest of a bitmap of the same
 *   size and density (PageBitmap.harvestInto);
 * - guest pages dirtied/s per vCPU per profile: a pass of one store per page
 *   right after a harvest (each first write faults on KVM's write
 *   protection), against the same pass over pages already writable.
 * Skips with the reason where the kvm backend cannot run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageBitmap } from '../../src/common/page-bitmap.js';
import { CbitStore } from '../../src/host/cbit-store.js';
import { kvmAvailability, kvmSkipReason } from '../../src/vmm/kvm/availability.js';
import { GuestEvent, type KvmWorkload, kvmLayout } from '../../src/vmm/kvm/control-page.js';
import { KvmGuest, type KvmProfile } from '../../src/vmm/kvm/kvm-guest.js';
import { waitForEveryVcpu } from '../../src/vmm/kvm/wait-for.js';
import { type BenchGroup, seededRandom } from '../harness.js';

const GIB_PAGES = 262144;

function window(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function booted(options: {
  profile: KvmProfile;
  workload: KvmWorkload;
  ramPages: number;
  vcpus?: number;
  stride?: number;
  manualProtect?: boolean;
}) {
  const guest = KvmGuest.create({ vcpus: 1, ...options });
  const up = waitForEveryVcpu(guest, GuestEvent.booted, 'boot');
  guest.resume();
  await up;
  return guest;
}

/** Hypercalls per second into a real tracker, over a window of ms. */
async function shimRate(profile: KvmProfile, ms: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'sevtrack-bench-'));
  const store = CbitStore.open(join(dir, 'cbits.db'));
  store.registerVm(1, 4096);
  const guest = await booted({ profile, workload: 'shim-seq', ramPages: 4096 });
  let calls = 0;
  guest.onBatch((b) => {
    const buf = Buffer.from(b.raw.buffer, b.raw.byteOffset, b.raw.byteLength);
    for (let i = 0; i < b.raw.length; i += 8) {
      if (b.raw[i] !== 0n) continue;
      store.applyHypercallAt(1, buf, i * 8 + 24);
      calls++;
    }
    store.commit();
  });
  const start = calls;
  const t0 = process.hrtime.bigint();
  await window(ms);
  const n = calls - start;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  guest.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
  return n / seconds;
}

/** Exits per second of `mov eax,1; mov edx,0x511; l: out dx,eax; jmp l`: each exit only queued. */
async function bareExitRate(profile: KvmProfile, ms: number): Promise<number> {
  const guest = KvmGuest.create({ ramPages: 256, vcpus: 1, profile, workload: 'idle', boot: false });
  guest.ram.set([0xb8, 1, 0, 0, 0, 0xba, 0x11, 0x05, 0, 0, 0xef, 0xeb, 0xfd], kvmLayout().codeGpa);
  let exits = 0;
  guest.onBatch((b) => {
    exits += b.events.length;
  });
  guest.resume();
  await window(50);
  const start = exits;
  const t0 = process.hrtime.bigint();
  await window(ms);
  const n = exits - start;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  guest.close();
  return n / seconds;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median ms of harvestDirty over passes of the stride workload on a 1 GiB guest. */
async function kvmHarvestMs(
  stride: number,
  manualProtect: boolean,
  runs: number,
): Promise<{ ms: number; dirty: number }> {
  const guest = await booted({
    profile: 'cpl3',
    workload: 'stride',
    ramPages: GIB_PAGES,
    stride,
    manualProtect,
  });
  const times: number[] = [];
  let dirty = 0;
  const out = new PageBitmap(GIB_PAGES);
  guest.harvestDirty(out);
  for (let i = 1; i <= runs + 1; i++) {
    const pass = waitForEveryVcpu(guest, GuestEvent.passDone, `pass ${i}`, (a) => a === BigInt(i), 120_000);
    guest.control.iteration = BigInt(i);
    await pass;
    out.words.fill(0);
    const t0 = process.hrtime.bigint();
    dirty = guest.harvestDirty(out);
    if (i > 1) times.push(Number(process.hrtime.bigint() - t0) / 1e6); // the first pass also faults pages in
  }
  guest.close();
  return { ms: median(times), dirty };
}

/** Median ms of the sim backend's harvest of a 1 GiB shared bitmap with `dirty` bits set in clusters. */
function simHarvestMs(dirty: number, runs: number): number {
  const shared = new PageBitmap(GIB_PAGES, { shared: true });
  const out = new PageBitmap(GIB_PAGES);
  const rand = seededRandom(3);
  const times: number[] = [];
  for (let r = 0; r < runs + 1; r++) {
    for (let i = 0; i < dirty; i++) shared.markAtomic(Math.floor(rand() * GIB_PAGES));
    out.words.fill(0);
    const t0 = process.hrtime.bigint();
    shared.harvestInto(out);
    if (r > 0) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(times);
}

/**
 * Pages dirtied per second by one vCPU's stride pass (one store per
 * consecutive page): right after a harvest, when KVM has write-protected every
 * page again and each first write faults; and without a harvest in between
 * (the pages already writable), the guest's own store limit.
 */
async function dirtyRates(profile: KvmProfile): Promise<{ logged: number; writable: number }> {
  const npages = profile === 'cpl0' ? 4096 : 65536;
  const guest = await booted({ profile, workload: 'stride', ramPages: npages, stride: 1 });
  const pass = async (i: bigint): Promise<number> => {
    const done = waitForEveryVcpu(guest, GuestEvent.passDone, `pass ${i}`, (a) => a === i, 120_000);
    const before = guest.control.counters(0).writes;
    const t0 = process.hrtime.bigint();
    guest.control.iteration = i;
    await done;
    return Number(guest.control.counters(0).writes - before) / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  await pass(1n); // faults the pages in
  guest.harvestDirty(new PageBitmap(npages));
  const logged = await pass(2n);
  const writable = await pass(3n);
  guest.close();
  return { logged, writable };
}

export const kvmGroup: BenchGroup = {
  name: 'kvm',
  description:
    'real VMs on /dev/kvm: shim exits, dirty-log harvest of 1 GiB, guest page dirtying per profile',
  async run(report) {
    const skip = kvmSkipReason();
    if (skip) {
      process.stderr.write(`kvm: skipped: ${skip}\n`);
      return;
    }
    const a = kvmAvailability();
    process.stderr.write(`kvm: host KVM ${a.flavour}, shim ${a.shim}, profiles ${a.profiles.join(', ')}\n`);
    for (const profile of a.profiles) {
      const shim = await shimRate(profile, 1000);
      const bare = await bareExitRate(profile, 1000);
      report({
        name: `shim exits/s into a tracker, ${profile}`,
        value: shim,
        unit: 'exits/s',
        baseline: bare,
        baselineName: 'bare out loop, exits only queued',
      });
    }
    for (const stride of [100, 10]) {
      for (const manual of [false, true]) {
        const kvm = await kvmHarvestMs(stride, manual, 5);
        const sim = simHarvestMs(kvm.dirty, 5);
        const pct = ((kvm.dirty / GIB_PAGES) * 100).toFixed(1);
        report({
          name: `harvest 1 GiB, ${pct}% dirty, ${manual ? 'GET+CLEAR_DIRTY_LOG' : 'GET_DIRTY_LOG'} (ms, lower is better)`,
          value: kvm.ms,
          unit: 'ms',
          baseline: sim,
          baselineName: 'sim harvestInto, same size and count',
        });
      }
    }
    for (const profile of a.profiles) {
      const r = await dirtyRates(profile);
      report({
        name: `guest pages dirtied/s per vCPU, ${profile}, first writes after a harvest`,
        value: r.logged,
        unit: 'pages/s',
        baseline: r.writable,
        baselineName: 'same pass, pages already writable',
      });
    }
  },
};
