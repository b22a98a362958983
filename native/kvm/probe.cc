#include "probe.h"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "../guest/abi.h"
#include "sys.h"
#include "vm.h"

namespace sevtrack::kvm {

namespace {

// mov eax,12; mov ebx,<gpa>; mov ecx,1; xor esi,esi; then the call; then
// mov rbx,rax; mov eax,SVT_EVENT_BOOTED; mov edx,0x511; out dx,eax; jmp $.
std::vector<uint8_t> ProbeCode(bool vmcall, uint32_t gpa) {
  std::vector<uint8_t> c = {0xb8, 12, 0, 0, 0, 0xbb};
  for (int i = 0; i < 4; ++i) c.push_back(static_cast<uint8_t>(gpa >> (8 * i)));
  const uint8_t rest[] = {0xb9, 1, 0, 0, 0, 0x31, 0xf6};
  c.insert(c.end(), rest, rest + sizeof rest);
  if (vmcall) {
    const uint8_t call[] = {0x31, 0xd2, 0x0f, 0x01, 0xc1};  // xor edx,edx; vmcall
    c.insert(c.end(), call, call + sizeof call);
  } else {
    const uint8_t call[] = {0xba, 0x10, 0x05, 0, 0, 0xef};  // mov edx,0x510; out dx,eax
    c.insert(c.end(), call, call + sizeof call);
  }
  const uint8_t tail[] = {0x48, 0x89, 0xc3, 0xb8, SVT_EVENT_BOOTED, 0, 0, 0, 0xba, 0x11, 0x05, 0, 0, 0xef, 0xeb, 0xfe};
  c.insert(c.end(), tail, tail + sizeof tail);
  return c;
}

// Runs the probe code on a one-vCPU VM; ok when the hypercall record and the
// event carrying the returned value (in RAX, then RBX) both arrive.
RunProbe RunOnce(Profile profile, bool vmcall) {
  RunProbe out;
  // An unaligned gpa for the port-I/O shim (we must answer -EINVAL: checks
  // the RAX write-back); an aligned one for vmcall (KVM refuses unaligned
  // ones itself, without exiting).
  const uint32_t gpa = vmcall ? SVT_DATA_GPA : SVT_DATA_GPA + 1;
  try {
    VmConfig cfg;
    cfg.ram_pages = SVT_MIN_RAM_PAGES;
    cfg.vcpus = 1;
    cfg.profile = profile;
    cfg.shim = vmcall ? ShimMode::kVmcall : ShimMode::kPortIo;
    cfg.stall_ms = 300;
    Vm vm(cfg);
    auto code = ProbeCode(vmcall, gpa);
    memcpy(vm.ram()->data + SVT_CODE_GPA, code.data(), code.size());
    std::mutex mu;
    std::condition_variable cv;
    bool notified = false;
    vm.SetNotify([&] {
      std::lock_guard<std::mutex> lk(mu);
      notified = true;
      cv.notify_all();
    });
    vm.Resume();
    std::vector<Record> got;
    std::vector<std::string> messages;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    bool done = false;
    while (!done) {
      {
        std::unique_lock<std::mutex> lk(mu);
        if (!cv.wait_until(lk, deadline, [&] { return notified; })) break;
        notified = false;
      }
      for (auto& r : vm.Drain(&messages)) {
        got.push_back(r);
        if (r.kind != kHypercall) done = true;
      }
    }
    vm.Close();
    const int64_t want = vmcall ? 0 : -22;
    if (got.size() == 2 && got[0].kind == kHypercall && got[0].nr == 12 && got[0].a0 == gpa &&
        got[1].kind == kEvent && static_cast<int64_t>(got[1].a1) == want) {
      out.ok = true;
      out.detail = vmcall ? "vmcall reached userspace as KVM_EXIT_HYPERCALL; the return value reached RAX"
                          : "long mode entered; the port-I/O shim exited and the return value reached RAX";
    } else if (!messages.empty()) {
      out.detail = messages[0];
    } else if (got.empty()) {
      out.detail = "no exit within 3 s";
    } else {
      out.detail = "unexpected exits: " + std::to_string(got.size()) + " records, first kind " +
                   std::to_string(got[0].kind) + (got.size() > 1 ? ", returned value " + std::to_string(static_cast<int64_t>(got[1].a1)) : "");
    }
  } catch (const std::exception& e) {
    out.detail = e.what();
  }
  return out;
}

ProbeResult Run() {
  ProbeResult r;
  int fd;
  try {
    fd = KvmFd();
  } catch (const UnavailableError& e) {
    r.reason = e.what();
    return r;
  }
  r.available = true;
  r.api_version = ioctl(fd, KVM_GET_API_VERSION, 0);
  const std::pair<const char*, int> caps[] = {
      {"KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY},
      {"KVM_CAP_SYNC_REGS", KVM_CAP_SYNC_REGS},
      {"KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT},
      {"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2},
      {"KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING},
      {"KVM_CAP_EXIT_HYPERCALL", KVM_CAP_EXIT_HYPERCALL},
      {"KVM_CAP_XSAVE", KVM_CAP_XSAVE},
      {"KVM_CAP_XCRS", KVM_CAP_XCRS},
      {"KVM_CAP_DEBUGREGS", KVM_CAP_DEBUGREGS},
      {"KVM_CAP_VCPU_EVENTS", KVM_CAP_VCPU_EVENTS},
      {"KVM_CAP_NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS},
      {"KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS},
  };
  for (const auto& c : caps) r.caps.emplace_back(c.first, CheckExtension(fd, c.second));
  r.cpl0 = RunOnce(Profile::kCpl0, false);
  r.cpl3 = RunOnce(Profile::kCpl3, false);
  if (CheckExtension(fd, KVM_CAP_EXIT_HYPERCALL) & (1 << 12)) {
    r.vmcall = RunOnce(Profile::kCpl0, true);
  } else {
    r.vmcall.detail = "KVM_CAP_EXIT_HYPERCALL does not offer KVM_HC_MAP_GPA_RANGE (bit 12)";
  }
  return r;
}

}  // namespace

const ProbeResult& Probe() {
  static const ProbeResult result = Run();
  return result;
}

}  // namespace sevtrack::kvm
