/*
 * The guest helper: freestanding C that runs inside a KVM VM in 64-bit long
 * mode (CPL0 or CPL3), built at install time into a flat binary loaded at
 * SVT_CODE_GPA (native/guest/build.mjs). Every vCPU enters _start with
 * rdi = its index and rsp at the top of its own stack page.
 *
 * It keeps its own c-bit table in guest memory (it travels with the guest's
 * pages), converts pages following the guest contract of docs/design.md §3
 * rule 5 (table first, then the hypercall, then writes under the new
 * perspective), stores writes to encrypted pages through the memory
 * encryption model of abi.h, and runs simplified forms of the sim backend's
 * workloads. All of its state lives in guest memory or registers, so a copy
 * of memory plus vCPU state continues on another VM.
 */
#include "abi.h"

#define CTL ((volatile struct svt_control*)SVT_CONTROL_GPA)
#define KEY ((const volatile uint64_t*)SVT_FW_GPA)
#define TABLE ((volatile uint64_t*)SVT_CBIT_TABLE_GPA)
#define KVM_HC_MAP_GPA_RANGE 12ull
#define ATTR_ENCRYPTED (1ull << 4)
#define KVM_ENOSYS 1000
#define KVM_FEATURE_HC_MAP_GPA_RANGE (1u << 16)

void _start(uint64_t vcpu) __attribute__((section(".text.start"), noreturn));

static int64_t shim(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2) {
  uint64_t ret;
  if (CTL->shim_mode == SVT_SHIM_VMCALL) {
    __asm__ volatile("vmcall" : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1), "d"(a2) : "memory");
  } else {
    __asm__ volatile("outl %%eax, %%dx"
                     : "=a"(ret)
                     : "a"(nr), "b"(a0), "c"(a1), "S"(a2), "d"((uint16_t)SVT_PORT_SHIM)
                     : "memory");
  }
  return (int64_t)ret;
}

static void event(uint64_t ev, uint64_t arg) {
  __asm__ volatile("outl %%eax, %%dx" : : "a"(ev), "b"(arg), "d"((uint16_t)SVT_PORT_EVENT) : "memory");
}

static void relax(void) { __asm__ volatile("pause" ::: "memory"); }

static int encrypted(uint64_t gfn) { return (TABLE[gfn >> 6] >> (gfn & 63)) & 1; }

static uint64_t keystream(uint64_t gpa) {
  uint64_t key[2] = {KEY[0], KEY[1]};
  return svt_keystream(key, gpa);
}

/* A guest store of one 64-bit word under the page's current c-bit. */
static void gwrite(uint64_t gpa, uint64_t value) {
  if (encrypted(gpa >> 12)) value ^= keystream(gpa);
  *(volatile uint64_t*)gpa = value;
}

static uint64_t rnd(volatile struct svt_vcpu_counters* c) {
  uint64_t x = c->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  c->rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

struct part {
  uint64_t gfn, npages;
};

/* The workload data area: a swiotlb pool (6%) on top, the rest split per vCPU. */
static struct part pool_of(void) {
  uint64_t data = CTL->ram_pages - (SVT_DATA_GPA >> 12);
  uint64_t n = data * 6 / 100;
  if (n == 0) n = 1;
  struct part p = {CTL->ram_pages - n, n};
  return p;
}

static struct part part_of(uint64_t vcpu) {
  uint64_t base = SVT_DATA_GPA >> 12;
  uint64_t per = (pool_of().gfn - base) / CTL->vcpus;
  struct part p = {base + vcpu * per, per};
  return p;
}

static int tracking = 1;

/*
 * Converts (gfn, npages) to encrypted or shared: the c-bit table first, then
 * the hypercall; the caller writes under the new perspective only after this
 * returns (docs/design.md §3 rule 5).
 */
static void convert(volatile struct svt_vcpu_counters* c, uint64_t gfn, uint64_t npages, int enc) {
  for (uint64_t i = 0; i < npages; i++) {
    uint64_t g = gfn + i, bit = 1ull << (g & 63);
    if (enc) __atomic_fetch_or(&TABLE[g >> 6], bit, __ATOMIC_SEQ_CST);
    else __atomic_fetch_and(&TABLE[g >> 6], ~bit, __ATOMIC_SEQ_CST);
  }
  if (!tracking) return;
  int64_t ret = shim(KVM_HC_MAP_GPA_RANGE, gfn << 12, npages, enc ? ATTR_ENCRYPTED : 0);
  c->last_ret = (uint64_t)ret;
  if (ret == 0) c->conversions++;
  else c->rejected++;
  if (ret == -KVM_ENOSYS) {
    tracking = 0;
    event(SVT_EVENT_NO_TRACKING, 0);
  }
}

/* Writes eight words spread over the page (a page's content, cheaply). */
static void write_page(volatile struct svt_vcpu_counters* c, uint64_t gfn, uint64_t value) {
  for (uint64_t off = 0; off < SVT_PAGE; off += 512) gwrite((gfn << 12) + off, value + off);
  c->writes += 8;
}

/* DMA buffers of 1-16 pages in slots of 16 in the last eighth of the
 * partition, each step converting one to the other perspective and usually
 * filling it (as the sim guest's churn, src/guest/workloads.ts): a buffer
 * stays shared between the step that shares it and the one that takes it
 * back, resting or not. Returns its operations for the pacing, counted as
 * the sim guest counts a churn step: 1 + n, filled or not. */
static uint64_t churn(volatile struct svt_vcpu_counters* c, struct part p) {
  uint64_t region = p.npages / 8;
  if (region < 16) region = 16;
  if (region > p.npages) region = p.npages;
  uint64_t slot_pages = region < 16 ? region : 16;
  uint64_t slots = region / slot_pages;
  uint64_t n = 1 + rnd(c) % slot_pages;
  uint64_t gfn = p.gfn + p.npages - region + (rnd(c) % slots) * slot_pages;
  convert(c, gfn, n, !encrypted(gfn));
  if (rnd(c) % 10 != 0)
    for (uint64_t i = 0; i < n; i++) write_page(c, gfn + i, rnd(c));
  return 1 + n;
}

static void swiotlb(volatile struct svt_vcpu_counters* c, struct part p, struct part pool) {
  if (rnd(c) % 8 == 0) write_page(c, p.gfn + rnd(c) % p.npages, rnd(c));
  else write_page(c, pool.gfn + rnd(c) % pool.npages, rnd(c));
}

static void iterate(volatile struct svt_vcpu_counters* c, struct part p, uint64_t vcpu) {
  uint64_t gfn = p.gfn + rnd(c) % p.npages;
  gwrite(gfn << 12, (CTL->iteration << 40) | (vcpu << 32) | (c->progress & 0xffffffffull));
  c->writes++;
}

/* The k-th call: a valid range, or (every fifth) the same gpa one byte off, which must be refused. */
static void shim_seq(volatile struct svt_vcpu_counters* c, struct part p) {
  uint64_t k = c->progress;
  uint64_t n = 1 + k % 4;
  uint64_t gfn = p.gfn + (k * 4) % (p.npages - 4);
  int enc = (int)(k & 1);
  if (k % 5 == 4) {
    int64_t ret = shim(KVM_HC_MAP_GPA_RANGE, (gfn << 12) + 1, n, enc ? ATTR_ENCRYPTED : 0);
    c->last_ret = (uint64_t)ret;
    c->rejected++;
    return;
  }
  convert(c, gfn, n, enc);
}

static void stride_pass(volatile struct svt_vcpu_counters* c, struct part p, uint64_t iter) {
  uint64_t s = CTL->stride ? CTL->stride : 1;
  for (uint64_t g = p.gfn; g < p.gfn + p.npages; g += s) {
    *(volatile uint64_t*)(g << 12) = iter;
    c->writes++;
  }
  c->pass = iter;
  event(SVT_EVENT_PASS_DONE, iter);
}

static void boot(uint64_t vcpu, volatile struct svt_vcpu_counters* c) {
  if (vcpu == 0) {
    uint32_t a, b, cc, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(cc), "=d"(d) : "a"(0x40000001u), "c"(0));
    CTL->cpuid_features = a;
    /* An SEV guest starts with every page private. */
    for (uint64_t w = 0; w < (CTL->ram_pages + 63) / 64; w++) TABLE[w] = ~0ull;
    /*
     * The helper's own pages (control page, c-bit table, code, stacks) are
     * shared: the encryption model lives in gwrite(), and instruction
     * fetches, stack and table accesses cannot go through it. Reported like
     * any conversion, so the host's tracker agrees.
     */
    convert(c, 0, SVT_DATA_GPA >> 12, 0);
    if (CTL->workload == SVT_WL_SWIOTLB) {
      struct part pool = pool_of();
      convert(c, pool.gfn, pool.npages, 0);
    }
    __atomic_store_n(&CTL->table_ready, 1, __ATOMIC_SEQ_CST);
  } else {
    while (!__atomic_load_n(&CTL->table_ready, __ATOMIC_SEQ_CST)) relax();
  }
  if (c->rng == 0) c->rng = (CTL->seed ^ ((vcpu + 1) * 0x9e3779b97f4a7c15ull)) | 1;
  c->booted = 1;
  event(SVT_EVENT_BOOTED, CTL->cpuid_features);
  event(SVT_EVENT_READY, 1);
}

void _start(uint64_t vcpu) {
  volatile struct svt_vcpu_counters* c = &CTL->vcpu[vcpu];
  if (!c->booted) boot(vcpu, c);
  struct part p = part_of(vcpu);
  struct part pool = pool_of();
  uint64_t wl = CTL->workload;
  if (wl > SVT_WL_STRIDE) event(SVT_EVENT_BAD_WORKLOAD, wl);
  uint64_t since_rest = 0;
  for (;;) {
    uint64_t stop = CTL->stop;
    if (stop & 1) {
      event(SVT_EVENT_STOPPED, stop);
      while (CTL->stop == stop) relax();
      continue;
    }
    uint64_t ops = 1; /* a page written or a call; a churn step says how many */
    switch (wl) {
      case SVT_WL_CHURN: ops = churn(c, p); break;
      case SVT_WL_SWIOTLB: swiotlb(c, p, pool); break;
      case SVT_WL_WRITE_HEAVY: write_page(c, p.gfn + rnd(c) % p.npages, rnd(c)); break;
      case SVT_WL_ITERATE: iterate(c, p, vcpu); break;
      case SVT_WL_SHIM_SEQ: shim_seq(c, p); break;
      case SVT_WL_STRIDE: {
        uint64_t iter = CTL->iteration;
        if (iter != c->pass) stride_pass(c, p, iter);
        else relax();
        break;
      }
      default: relax(); break;
    }
    c->progress++;
    uint64_t pace = CTL->ops_per_ms;
    since_rest += ops;
    if (pace != 0 && since_rest >= pace) {
      event(SVT_EVENT_REST, since_rest);
      since_rest = 0;
    }
  }
}
