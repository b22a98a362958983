/*
 * The contract between the guest helper (native/guest/helper.c, running
 * inside a KVM VM) and the host VMM (native/kvm/). One header, included by
 * both, so the two sides cannot drift. Layout of guest physical memory:
 *
 *   RAM slot (KVM_MEM_LOG_DIRTY_PAGES, migrated):
 *     0x00000  control page: host-written parameters, per-vCPU counters
 *     0x01000  the guest's c-bit table (1 bit per RAM page, 1 = encrypted)
 *     0x10000  the helper's code (flat binary, at most 128 KiB)
 *     0x30000  stacks, one 4 KiB page per vCPU (the stack of vCPU v ends at
 *              0x31000 + v * 0x1000)
 *     0x40000  workload data: everything above, split per vCPU
 *   Everything below 0x40000 is shared (vCPU 0 converts it at boot); data
 *   pages start encrypted.
 *   Firmware slot (unlogged, never migrated; each VM builds its own):
 *     SVT_FW_GPA + 0x0000  key page: the VM's memory-encryption key
 *     SVT_FW_GPA + 0x1000  PML4, +0x2000 PDPT, +0x3000.. page directories
 *
 * Hypercall shim: `out dx, eax` with dx = SVT_PORT_SHIM, rax = nr,
 * rbx = a0, rcx = a1, rsi = a2; the host writes the KVM return value to rax
 * before the guest continues. Where KVM_EXIT_HYPERCALL works with `vmcall`
 * (control->shim_mode == SVT_SHIM_VMCALL) the guest uses `vmcall` with
 * rax = nr, rbx = a0, rcx = a1, rdx = a2 instead (the Linux hypercall ABI).
 * Events: `out dx, eax` with dx = SVT_PORT_EVENT, rax = event, rbx = arg.
 */
#ifndef SEVTRACK_GUEST_ABI_H
#define SEVTRACK_GUEST_ABI_H

#include <stdint.h>

#define SVT_GUEST_MAGIC 0x31545645535456ull /* "VTSEVT1" */
#define SVT_GUEST_VERSION 2u /* 2: the stop word is an epoch */

#define SVT_PAGE 4096ull
#define SVT_CONTROL_GPA 0x0ull
#define SVT_CBIT_TABLE_GPA 0x1000ull
#define SVT_CBIT_TABLE_PAGES 8ull
#define SVT_CODE_GPA 0x10000ull
#define SVT_CODE_MAX 0x20000ull
#define SVT_STACK_GPA 0x30000ull
#define SVT_DATA_GPA 0x40000ull
#define SVT_MAX_VCPUS 16u
/* The c-bit table's 8 pages cover 262144 pages: a 1 GiB guest. */
#define SVT_MAX_RAM_PAGES (SVT_CBIT_TABLE_PAGES * SVT_PAGE * 8ull)
#define SVT_MIN_RAM_PAGES 128ull
/* The firmware slot sits at 1 GiB, just above the largest RAM slot. */
#define SVT_FW_GPA 0x40000000ull
#define SVT_FW_PAGES 8ull

#define SVT_PORT_SHIM 0x0510
#define SVT_PORT_EVENT 0x0511

#define SVT_SHIM_PORTIO 0u
#define SVT_SHIM_VMCALL 1u

/* Events (rax of an SVT_PORT_EVENT exit). */
#define SVT_EVENT_BOOTED 1u     /* arg: features seen by the guest */
#define SVT_EVENT_PASS_DONE 2u  /* arg: the iteration whose pass finished */
#define SVT_EVENT_STOPPED 3u    /* arg: the stop word it answers (an odd epoch) */
#define SVT_EVENT_NO_TRACKING 4u /* the host answered -KVM_ENOSYS: migration unsupported */
#define SVT_EVENT_READY 5u      /* arg: 1 = KVM_MIGRATION_READY set, 0 = cleared */
#define SVT_EVENT_BAD_WORKLOAD 6u
/* The vCPU did ops_per_ms operations: the host holds it until its
 * millisecond is over (handled in the vCPU thread, never queued). */
#define SVT_EVENT_REST 7u

/* Workloads (control->workload). */
#define SVT_WL_IDLE 0u
#define SVT_WL_CHURN 1u       /* DMA-style buffers converted back and forth, rewritten */
#define SVT_WL_SWIOTLB 2u     /* a shared bounce pool, I/O writes to it, some private writes */
#define SVT_WL_WRITE_HEAVY 3u /* random writes to (encrypted) pages */
#define SVT_WL_ITERATE 4u     /* dirty-log selftest: the iteration number to random pages */
#define SVT_WL_SHIM_SEQ 5u    /* a known sequence of hypercalls, some invalid */
#define SVT_WL_STRIDE 6u      /* one pass per iteration writing every stride-th page */

/* Per-vCPU counters in the control page: written only by that vCPU. */
struct svt_vcpu_counters {
  uint64_t progress;    /* operations completed; keeps advancing while the workload runs */
  uint64_t writes;      /* 8-byte guest writes to data pages */
  uint64_t conversions; /* MAP_GPA_RANGE calls answered 0 */
  uint64_t rejected;    /* calls answered with a negative value */
  uint64_t last_ret;    /* the last value the host returned */
  uint64_t pass;        /* the last iteration whose pass finished (stride) */
  uint64_t rng;         /* the workload RNG state: travels with the guest */
  uint64_t booted;
};

/* The control page at SVT_CONTROL_GPA. */
struct svt_control {
  uint64_t magic;
  uint32_t version;
  uint32_t vcpus;
  uint64_t ram_pages;
  uint32_t workload;
  uint32_t shim_mode;
  uint64_t seed;
  uint64_t stride;               /* SVT_WL_STRIDE: every stride-th page */
  volatile uint64_t iteration;   /* host-written, read by the guest */
  /* A stop epoch: odd = stop requested, even = run. The host only ever adds
   * one (odd to stop, even to let go), so a vCPU that slept through a
   * let-go and the next stop still sees a new value: it reports STOPPED
   * once per odd value and spins while the word holds it. (A 0/1 flag lost
   * exactly that case: a vCPU still spinning on the last 1 never reported
   * the next stop.) */
  volatile uint64_t stop;
  uint64_t cpuid_features;       /* CPUID 0x40000001 EAX as the guest saw it */
  volatile uint64_t table_ready; /* vCPU 0 sets 1 once the c-bit table is initialised */
  /* The guest's load: workload operations per ms per vCPU (0 = unpaced). A
   * vCPU reports SVT_EVENT_REST after that many; it is the guest's own
   * setting, so it travels with the guest's memory. */
  uint64_t ops_per_ms;
  uint64_t reserved[53];
  struct svt_vcpu_counters vcpu[SVT_MAX_VCPUS]; /* at offset 0x200 */
};

/*
 * The memory-encryption model of the kvm backend (docs/kvm.md). The VM's
 * memory is plain host memory; a guest write of a 64-bit word to a page whose
 * c-bit is set stores word XOR svt_keystream(key, gpa of the word), a write to
 * a shared page stores the word as is. The key lives in the firmware slot,
 * which the host's migration code never reads; only the PSP model (which
 * holds the same key) can turn the stored bytes back into the guest's view.
 * The keystream is a keyed 64-bit mixer of the word's GPA: per-VM, per-GPA,
 * so bytes sent from the wrong perspective are garbage at the destination,
 * whose key differs.
 */
static inline uint64_t svt_keystream(const uint64_t key[2], uint64_t gpa) {
  uint64_t z = (gpa ^ key[0]) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z ^= key[1];
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

#endif
