/**
 * The kvm backend's VM on real KVM: the guest helper boots at both privilege
 * profiles, its hypercalls arrive in order per vCPU with the right arguments
 * and return values, a real CbitStore fed from the record batches agrees with
 * the guest's own c-bit table, and a copy of memory plus vCPU state continues
 * on a second VM exactly where the first stopped. Skips, naming the reason,
 * where /dev/kvm is missing or unusable.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../src/common/errors.js';
import { KVM_HC_MAP_GPA_RANGE } from '../../../src/common/kvm-abi.js';
import { CbitStore } from '../../../src/host/cbit-store.js';
import { kvmSkipReason } from '../../../src/vmm/kvm/availability.js';
import { GuestEvent } from '../../../src/vmm/kvm/control-page.js';
import { DRAIN_INTERVAL_MS, KvmGuest, type ShimCall } from '../../../src/vmm/kvm/kvm-guest.js';
import { waitForEveryVcpu } from '../../../src/vmm/kvm/wait-for.js';
import { tempDir } from '../../support/tmp.js';
import { copyVm, partition, twinVms, until } from './support.js';

const skip = kvmSkipReason();
const skipCpl0 = kvmSkipReason('cpl0');
if (skip) console.warn(`kvm tests skipped: ${skip}`);

/** The k-th call of shim-seq on a vCPU, as native/guest/helper.c makes it. */
function expectedCall(k: number, part: { gfn: number; npages: number }) {
  const gfn = part.gfn + ((k * 4) % (part.npages - 4));
  const bad = k % 5 === 4;
  return {
    a0: BigInt(gfn) * 4096n + (bad ? 1n : 0n),
    a1: BigInt(1 + (k % 4)),
    a2: (k & 1) === 1 ? 16n : 0n,
    ret: bad ? -22 : 0,
  };
}

/**
 * Checks each vCPU's calls against shim-seq's formula, from call firstK[v]
 * on; without firstK, vCPU 0 must start with the boot conversion of the
 * helper's own pages (gpa 0, 64 pages, to shared). Returns the next k per vCPU.
 */
function checkSequence(
  calls: ShimCall[],
  ramPages: number,
  vcpus: number,
  firstK?: number[],
  kvmAnswersInvalid = false,
): number[] {
  const next = Array.from({ length: vcpus }, (_, v) => firstK?.[v] ?? 0);
  const lastSeq = new Array<number>(vcpus).fill(-1);
  let bootCall = firstK === undefined;
  for (const c of calls) {
    if (bootCall && c.vcpu === 0) {
      expect({ a0: c.a0, a1: c.a1, a2: c.a2, ret: c.ret }).toEqual({ a0: 0n, a1: 64n, a2: 0n, ret: 0 });
      bootCall = false;
      lastSeq[0] = c.seq;
      continue;
    }
    expect(c.seq).toBeGreaterThan(lastSeq[c.vcpu]);
    lastSeq[c.vcpu] = c.seq;
    // Through vmcall, KVM itself refuses the unaligned calls: they never exit.
    if (kvmAnswersInvalid && next[c.vcpu] % 5 === 4) next[c.vcpu]++;
    const want = expectedCall(next[c.vcpu], partition(ramPages, vcpus, c.vcpu));
    expect({ nr: c.nr, a0: c.a0, a1: c.a1, a2: c.a2, ret: c.ret }).toEqual({
      nr: BigInt(KVM_HC_MAP_GPA_RANGE),
      ...want,
    });
    next[c.vcpu]++;
  }
  return next;
}

describe('KvmGuest on real KVM', () => {
  it('refuses bad sizes with errors naming the field, and creates nothing', () => {
    expect(() => KvmGuest.create({ ramPages: 100, vcpus: 1, profile: 'cpl3', workload: 'idle' })).toThrow(
      InvalidArgumentError,
    );
    expect(() => KvmGuest.create({ ramPages: 4096, vcpus: 0, profile: 'cpl3', workload: 'idle' })).toThrow(
      /vcpus 0/,
    );
    expect(() =>
      KvmGuest.create({ ramPages: 4096, vcpus: 1, profile: 'cpl3', workload: 'idle', opsPerMs: 1.5 }),
    ).toThrow(/opsPerMs 1.5 must be an integer in \[0, 1000000\] \(0 = unpaced\)/);
  });

  for (const profile of ['cpl3', 'cpl0'] as const) {
    it.skipIf(profile === 'cpl0' ? skipCpl0 : skip)(
      `${profile}: shim exits arrive in order per vCPU with the right arguments, and the tracker agrees with the guest's table`,
      async () => {
        const ramPages = 2048;
        const vcpus = 2;
        const store = CbitStore.open(join(tempDir(), 'cbits.db'));
        store.registerVm(1, ramPages, { initialEncrypted: true });
        const guest = KvmGuest.create({ ramPages, vcpus, profile, workload: 'shim-seq' });
        const calls: ShimCall[] = [];
        guest.onBatch((b) => {
          calls.push(...b.calls);
          for (const c of b.calls) {
            const out = store.applyHypercall(1, c.nr, c.a0, c.a1, c.a2);
            expect(out.ret).toBe(c.ret);
          }
          store.commit();
        });
        try {
          const booted = waitForEveryVcpu(guest, GuestEvent.booted, 'every vCPU booted');
          guest.resume();
          await booted;
          await until(
            () => [0, 1].every((v) => calls.filter((c) => c.vcpu === v).length >= 100),
            '100 hypercalls of each vCPU',
          );
          guest.pause();
          const vmcall = guest.shim === 'vmcall';
          const next = checkSequence(calls, ramPages, vcpus, undefined, vmcall);
          for (let v = 0; v < vcpus; v++) {
            const mine = calls.filter((c) => c.vcpu === v);
            const c = guest.control.counters(v);
            // The host records a call before the guest sees its result; a vCPU
            // paused right after its exit has not counted the last call yet.
            const okLag = BigInt(mine.filter((x) => x.ret === 0).length) - c.conversions;
            const rejectedLag = vmcall ? 0n : BigInt(mine.filter((x) => x.ret !== 0).length) - c.rejected;
            expect(okLag >= 0n && rejectedLag >= 0n && okLag + rejectedLag <= 1n).toBe(true);
          }
          // The tracker agrees with the guest's own table, except where a vCPU
          // paused between its table update and its hypercall (table first,
          // docs/design.md §3 rule 5): only the range of its next call.
          const state = store.state(1);
          for (let v = 0; v < vcpus; v++) {
            const part = partition(ramPages, vcpus, v);
            const inFlight = expectedCall(next[v], part);
            const first = Number(inFlight.a0 / 4096n);
            const end = inFlight.ret === 0 ? first + Number(inFlight.a1) : first;
            for (let gfn = part.gfn; gfn < part.gfn + part.npages; gfn++) {
              if (gfn >= first && gfn < end) continue;
              expect(state.isEncrypted(gfn), `gfn ${gfn}`).toBe(guest.guestCbit(gfn));
            }
          }
        } finally {
          guest.close();
          store.close();
        }
      },
    );
  }

  it.skipIf(skip)(
    'a copy of memory and vCPU state continues on a second VM exactly where the first paused',
    async () => {
      const ramPages = 1024;
      const vcpus = 2;
      const key = new Uint8Array(16).fill(7);
      const { from: a, to: b } = twinVms({ ramPages, vcpus, profile: 'cpl3', workload: 'shim-seq', key });
      try {
        const callsA: ShimCall[] = [];
        a.onBatch((batch) => callsA.push(...batch.calls));
        a.resume();
        const each = (calls: ShimCall[]) =>
          [0, 1].every((v) => calls.filter((c) => c.vcpu === v).length >= 30);
        await until(() => each(callsA), '30 hypercalls of each vCPU on the source');
        a.pause();
        const next = checkSequence(callsA, ramPages, vcpus);
        copyVm(a, b);
        const progress = [0, 1].map((v) => a.control.counters(v).progress);
        a.close();
        const callsB: ShimCall[] = [];
        b.onBatch((batch) => callsB.push(...batch.calls));
        b.resume();
        await until(() => each(callsB), '30 hypercalls of each vCPU on the destination');
        b.pause();
        // The destination's first call of each vCPU is the one after the source's last.
        checkSequence(callsB, ramPages, vcpus, next);
        for (let v = 0; v < vcpus; v++) expect(b.control.counters(v).progress).toBeGreaterThan(progress[v]);
      } finally {
        a.close();
        b.close();
      }
    },
  );

  it.skipIf(skip)(
    'signalled drains are paced: batches of an unpaced guest arrive at least the drain interval apart',
    async () => {
      // Each batch ends in a tracker commit (an fsync): drained on every
      // signal, an unpaced guest kept the VMM thread in fsync.
      const vm = KvmGuest.create({ ramPages: 1024, vcpus: 2, profile: 'cpl3', workload: 'churn', seed: 3n });
      try {
        const at: number[] = [];
        vm.onBatch(() => at.push(performance.now()));
        vm.resume();
        await until(() => at.length >= 40, '40 batches');
        vm.pause();
        const gaps = at.slice(1, 40).map((t, i) => t - at[i]);
        expect(Math.min(...gaps)).toBeGreaterThanOrEqual(DRAIN_INTERVAL_MS);
      } finally {
        vm.close();
      }
    },
  );

  it.skipIf(skip)(
    'a paced guest does at most opsPerMs operations a millisecond per vCPU, and keeps its pace on a copy',
    async () => {
      const ramPages = 1024;
      const vcpus = 2;
      const opsPerMs = 5;
      const key = new Uint8Array(16).fill(9);
      // write-heavy: one operation (a page written) per step, so progress counts operations.
      const { from: a, to: b } = twinVms({
        ramPages,
        vcpus,
        profile: 'cpl3',
        workload: 'write-heavy',
        key,
        opsPerMs,
      });
      /** Runs `vm` until every vCPU did 200 operations; each vCPU's ops within budget for the time it took. */
      const withinPace = async (vm: KvmGuest) => {
        const progress = () => [0, 1].map((v) => Number(vm.control.counters(v).progress));
        const before = progress();
        const t0 = performance.now();
        await until(() => progress().every((p, v) => p >= before[v] + 200), '200 operations of each vCPU');
        const after = progress();
        const ms = performance.now() - t0;
        // One budget per millisecond begun, and one in flight at each end.
        for (let v = 0; v < vcpus; v++) expect(after[v] - before[v]).toBeLessThanOrEqual(opsPerMs * (ms + 2));
      };
      try {
        a.resume();
        await withinPace(a);
        a.pause();
        copyVm(a, b);
        a.close();
        // b wrote no control page: the pace came with a's memory.
        expect(b.control.opsPerMs).toBe(opsPerMs);
        b.resume();
        await withinPace(b);
      } finally {
        a.close();
        b.close();
      }
    },
  );

  it.skipIf(skip)('refuses vCPU state that is not a saved state, naming the offset', () => {
    const g = KvmGuest.create({ ramPages: 256, vcpus: 1, profile: 'cpl3', workload: 'idle' });
    try {
      expect(() => g.loadVcpuStates([new Uint8Array(40)])).toThrow(/expected magic SVTVCPU at offset 0/);
      const good = g.saveVcpuStates()[0];
      const truncated = good.slice(0, 100);
      expect(() => g.loadVcpuStates([truncated])).toThrow(InvalidArgumentError);
    } finally {
      g.close();
    }
  });
});
