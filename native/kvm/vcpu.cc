// The vCPU thread: KVM_RUN in a loop, exits handled here. Hypercalls are
// validated as KVM and docs/design.md §2 define them and queued before the
// guest sees the return value; guest events are queued in the same order
// (but REST, which paces the vCPU: it sleeps here, Vm::Rest).
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "../guest/abi.h"
#include "sys.h"
#include "vm.h"

namespace sevtrack::kvm {

namespace {
constexpr int64_t kEinval = -22, kEnosys = -1000;
constexpr uint64_t kHcMapGpaRange = 12;

const char* ExitName(uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
    case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
    case KVM_EXIT_IO: return "KVM_EXIT_IO";
    case KVM_EXIT_HYPERCALL: return "KVM_EXIT_HYPERCALL";
    case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
    case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
    case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN (triple fault)";
    case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "KVM_EXIT_SYSTEM_EVENT";
    default: return "an unexpected exit";
  }
}

// KVM_HC_MAP_GPA_RANGE's checks: KVM's own (aligned gpa, npages != 0, no
// wrap) and sevtrack's stricter ones (inside guest memory, bits 63:5 clear,
// a known page-size code). Other hypercalls: -KVM_ENOSYS.
int64_t Validate(uint64_t nr, uint64_t gpa, uint64_t npages, uint64_t attrs, uint64_t ram_pages) {
  if (nr != kHcMapGpaRange) return kEnosys;
  if ((gpa & 0xfff) != 0 || npages == 0) return kEinval;
  const uint64_t gfn = gpa >> 12;
  if (npages > (1ull << 52) - gfn) return kEinval;
  if (gfn + npages > ram_pages) return kEinval;
  if ((attrs & ~0x1full) != 0 || (attrs & 0xf) > 2) return kEinval;
  return 0;
}
}  // namespace

void Vm::HandleShim(Vcpu& v, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t* ret) {
  const int64_t r = Validate(nr, a0, a1, a2, config_.ram_pages);
  Push(v, Record{kHypercall, 0, 0, nr, a0, a1, a2, static_cast<uint64_t>(r)});
  *ret = static_cast<uint64_t>(r);  // only now may the guest continue
}

// The guest paces itself (ops_per_ms operations, then a REST exit); the
// host keeps it to one such budget per millisecond by sleeping this vCPU's
// thread until the millisecond that began at its last rest is over. Time a
// vCPU spent stopped or slow is not banked: the next millisecond starts when
// the rest ends. A pause's kick (a signal) cuts the sleep short.
void Vm::Rest(Vcpu& v) {
  uint64_t now = MonotonicNs();
  if (v.rest_due_ns > now && !pause_req_.load() && !quit_.load()) {
    timespec due{static_cast<time_t>(v.rest_due_ns / 1'000'000'000),
                 static_cast<long>(v.rest_due_ns % 1'000'000'000)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, nullptr);
    now = std::max(MonotonicNs(), v.rest_due_ns);
  }
  v.rest_due_ns = now + 1'000'000;
}

// Marks the vCPU failed first, so whoever reads the record sees the status
// already say so; then reports it and parks for good.
void Vm::Fail(Vcpu& v, uint64_t reason, uint64_t detail, const std::string& message) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    v.failed = true;
    parked_cv_.notify_all();
  }
  Push(v, Record{kFatal, 0, 0, 0, reason, detail, 0, 0}, Target(v) + ": " + message);
  std::unique_lock<std::mutex> lk(mu_);
  resume_cv_.wait(lk, [this] { return quit_.load(); });
}

// Returns false when the vCPU failed (and has parked for good).
bool Vm::HandleExit(Vcpu& v) {
  kvm_run* run = v.run;
  v.exits.fetch_add(1);
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 ||
          (run->io.port != SVT_PORT_SHIM && run->io.port != SVT_PORT_EVENT)) {
        Fail(v, KVM_EXIT_IO, run->io.port,
             "port I/O to " + Hex(run->io.port) + " is not the shim (0x510) or the event port (0x511)");
        return false;
      }
      kvm_regs local{};
      kvm_regs* regs = &local;
      if (sync_regs_) {
        regs = &run->s.regs.regs;
      } else {
        Ioctl(v.fd, KVM_GET_REGS, regs, "KVM_GET_REGS", Target(v));
      }
      if (run->io.port == SVT_PORT_EVENT) {
        if (regs->rax == SVT_EVENT_REST) Rest(v);
        else Push(v, Record{kEvent, 0, 0, 0, regs->rax, regs->rbx, 0, 0});
        return true;
      }
      uint64_t ret = 0;
      HandleShim(v, regs->rax, regs->rbx, regs->rcx, regs->rsi, &ret);
      regs->rax = ret;
      if (sync_regs_) run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
      else Ioctl(v.fd, KVM_SET_REGS, regs, "KVM_SET_REGS", Target(v));
      return true;
    }
    case KVM_EXIT_HYPERCALL: {
      uint64_t ret = 0;
      HandleShim(v, run->hypercall.nr, run->hypercall.args[0], run->hypercall.args[1], run->hypercall.args[2], &ret);
      run->hypercall.ret = ret;
      return true;
    }
    case KVM_EXIT_INTR:
      return true;
    default: {
      std::string msg = std::string("guest stopped with ") + ExitName(run->exit_reason);
      uint64_t detail = 0;
      if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) {
        detail = run->internal.suberror;
        msg += " (suberror " + std::to_string(detail) + ")";
      } else if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) {
        detail = run->fail_entry.hardware_entry_failure_reason;
      } else if (run->exit_reason == KVM_EXIT_MMIO) {
        detail = run->mmio.phys_addr;
        msg += " at gpa " + Hex(detail) + " (outside every memory slot)";
      }
      Fail(v, run->exit_reason, detail, msg);
      return false;
    }
  }
}

// Completes the pending exit (one KVM_RUN with immediate_exit = 1), then
// parks until resumed or closed.
void Vm::ParkUntilResumed(Vcpu& v) {
  v.run->immediate_exit = 1;
  if (ioctl(v.fd, KVM_RUN, 0) == 0 && v.run->exit_reason != KVM_EXIT_INTR) {
    // KVM entered the guest anyway (an older kernel): handle it like any exit.
    if (!HandleExit(v)) return;
  }
  std::unique_lock<std::mutex> lk(mu_);
  v.parked = true;
  parked_cv_.notify_all();
  resume_cv_.wait(lk, [this] { return !pause_req_.load() || quit_.load(); });
  v.parked = false;
  v.run->immediate_exit = 0;
}

void Vm::Loop(Vcpu& v) {
  if (sync_regs_) v.run->kvm_valid_regs = KVM_SYNC_X86_REGS;
  while (!quit_.load()) {
    if (pause_req_.load()) {
      ParkUntilResumed(v);
      continue;
    }
    v.run_start_ns.store(MonotonicNs());
    v.in_run.store(true);
    const int r = ioctl(v.fd, KVM_RUN, 0);
    const int err = errno;
    v.in_run.store(false);
    if (r < 0) {
      if (err != EINTR && err != EAGAIN) {
        Fail(v, 0, static_cast<uint64_t>(err), "ioctl(KVM_RUN) on " + Target(v) + " failed: " + ErrnoName(err));
        return;
      }
      v.kicks.fetch_add(1);
      v.run->immediate_exit = 0;  // then re-check pause_req_: a pause kicks after setting it
      if (v.stalled.load()) {
        kvm_regs regs{};
        ioctl(v.fd, KVM_GET_REGS, &regs);
        Fail(v, 0, regs.rip,
             "watchdog: no exit and no progress for " + std::to_string(config_.stall_ms) + " ms (rip " + Hex(regs.rip) + ")");
        return;
      }
      continue;
    }
    if (!HandleExit(v)) return;
  }
}

}  // namespace sevtrack::kvm
