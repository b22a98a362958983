// VM lifecycle, memory slots, dirty log, pause/resume and the watchdog.
// The vCPU run loop and exit handling are in vcpu.cc, vCPU state in
// vcpu_state.cc.
#include "vm.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "../guest/abi.h"
#include "sys.h"

namespace sevtrack::kvm {

Mapping::Mapping(size_t bytes, const char* what) : size(bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw SysError(std::string("mmap of ") + what + " (" + std::to_string(bytes) + " bytes)", errno);
  data = static_cast<uint8_t*>(p);
}

Mapping::~Mapping() {
  if (data != nullptr) munmap(data, size);
}

namespace {
void SetSlot(int vm_fd, uint32_t slot, uint32_t flags, uint64_t gpa, const Mapping& m) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = m.size;
  r.userspace_addr = reinterpret_cast<uint64_t>(m.data);
  Ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION", "slot " + std::to_string(slot));
}
}  // namespace

Vm::Vm(const VmConfig& config) : config_(config) {
  const int kvm = KvmFd();
  fd_ = Ioctl(kvm, KVM_CREATE_VM, nullptr, "KVM_CREATE_VM", "/dev/kvm");
  try {
    sync_regs_ = (CheckExtension(fd_, KVM_CAP_SYNC_REGS) & KVM_SYNC_X86_REGS) != 0;
    if (config.manual_protect && (CheckExtension(fd_, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) & 1) != 0) {
      kvm_enable_cap cap{};
      cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
      cap.args[0] = 1;  // KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, not INITIALLY_SET
      Ioctl(fd_, KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)", "the VM");
      manual_protect_ = true;
    }
    if (config.shim == ShimMode::kVmcall) {
      kvm_enable_cap cap{};
      cap.cap = KVM_CAP_EXIT_HYPERCALL;
      cap.args[0] = 1ull << 12;  // KVM_HC_MAP_GPA_RANGE
      Ioctl(fd_, KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(EXIT_HYPERCALL)", "the VM");
    }
    ram_ = std::make_shared<Mapping>(config.ram_pages * SVT_PAGE, "guest RAM");
    fw_ = std::make_unique<Mapping>(SVT_FW_PAGES * SVT_PAGE, "the firmware slot");
    SetSlot(fd_, 0, KVM_MEM_LOG_DIRTY_PAGES, 0, *ram_);
    SetSlot(fd_, 1, 0, SVT_FW_GPA, *fw_);
    memcpy(fw_->data, config.key, sizeof config.key);
    BuildPageTables(fw_->data, SVT_FW_GPA);
    dirty_.resize((config.ram_pages + 63) / 64);
    for (uint32_t i = 0; i < config.vcpus; ++i) CreateVcpu(i);
  } catch (...) {
    Close();
    throw;
  }
}

Vm::~Vm() { Close(); }

void Vm::CreateVcpu(uint32_t index) {
  auto v = std::make_unique<Vcpu>();
  v->vm = this;
  v->index = index;
  const std::string target = Target(*v);
  v->fd = Ioctl(fd_, KVM_CREATE_VCPU, reinterpret_cast<void*>(static_cast<uintptr_t>(index)), "KVM_CREATE_VCPU", target);
  v->run_size = static_cast<size_t>(Ioctl(KvmFd(), KVM_GET_VCPU_MMAP_SIZE, nullptr, "KVM_GET_VCPU_MMAP_SIZE", "/dev/kvm"));
  void* run = mmap(nullptr, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
  if (run == MAP_FAILED) throw SysError("mmap of kvm_run for " + target, errno);
  v->run = static_cast<kvm_run*>(run);
  SetCpuid(v->fd, target);
  kvm_sregs s{};
  Ioctl(v->fd, KVM_GET_SREGS, &s, "KVM_GET_SREGS", target);
  LongModeSregs(&s, SVT_FW_GPA + 0x1000, config_.profile);
  Ioctl(v->fd, KVM_SET_SREGS, &s, "KVM_SET_SREGS", target);
  kvm_regs r = EntryRegs(SVT_CODE_GPA, SVT_STACK_GPA + (index + 1) * SVT_PAGE, index, config_.profile);
  Ioctl(v->fd, KVM_SET_REGS, &r, "KVM_SET_REGS", target);
  vcpus_.push_back(std::move(v));
}

void Vm::Start() {
  std::lock_guard<std::mutex> lk(mu_);
  if (started_ || closed_) return;
  started_ = true;
  KickSignal();
  for (auto& v : vcpus_) {
    Vcpu* p = v.get();
    p->thread = std::thread([this, p] { Loop(*p); });
    p->tid = p->thread.native_handle();
  }
  watchdog_ = std::thread([this] { Watchdog(); });
}

void Vm::Kick(Vcpu& v) {
  v.run->immediate_exit = 1;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  pthread_kill(v.tid, KickSignal());
}

void Vm::Pause(uint64_t timeout_ms) {
  Start();
  std::unique_lock<std::mutex> lk(mu_);
  pause_req_.store(true);
  for (auto& v : vcpus_) Kick(*v);
  auto all_parked = [this] {
    for (auto& v : vcpus_)
      if (!v->parked && !v->failed) return false;
    return true;
  };
  if (!parked_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), all_parked)) {
    for (auto& v : vcpus_)
      if (!v->parked && !v->failed)
        throw std::runtime_error("pause: " + Target(*v) + " did not reach a clean point within " +
                                 std::to_string(timeout_ms) + " ms");
  }
}

void Vm::Resume() {
  Start();
  std::lock_guard<std::mutex> lk(mu_);
  pause_req_.store(false);
  resume_cv_.notify_all();
}

void Vm::Close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closed_) return;
    closed_ = true;
    quit_.store(true);
    pause_req_.store(true);
    for (auto& v : vcpus_)
      if (v->thread.joinable()) Kick(*v);
    resume_cv_.notify_all();
    watchdog_cv_.notify_all();
  }
  for (auto& v : vcpus_)
    if (v->thread.joinable()) v->thread.join();
  if (watchdog_.joinable()) watchdog_.join();
  for (auto& v : vcpus_) {
    if (v->run != nullptr) munmap(v->run, v->run_size);
    if (v->fd >= 0) close(v->fd);
  }
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void Vm::Push(Vcpu& v, Record r, std::string message) {
  r.vcpu = v.index;
  r.seq = v.seq++;
  {
    std::lock_guard<std::mutex> lk(v.qmu);
    v.queue.push_back(r);
    if (r.kind == kFatal) v.messages.push_back(std::move(message));
  }
  if (!notify_pending_.exchange(true) && notify_) notify_();
}

std::vector<Record> Vm::Drain(std::vector<std::string>* messages) {
  notify_pending_.store(false);
  std::vector<Record> out;
  for (auto& v : vcpus_) {
    std::vector<Record> q;
    std::vector<std::string> m;
    {
      std::lock_guard<std::mutex> lk(v->qmu);
      q.swap(v->queue);
      m.swap(v->messages);
    }
    out.insert(out.end(), q.begin(), q.end());
    if (messages != nullptr) messages->insert(messages->end(), m.begin(), m.end());
  }
  return out;
}

uint64_t Vm::HarvestDirty(uint64_t* out, size_t nwords) {
  std::lock_guard<std::mutex> lk(dirty_mu_);
  if (nwords < dirty_.size())
    throw std::invalid_argument("the dirty bitmap holds " + std::to_string(nwords * 64) + " pages, the RAM slot " +
                                std::to_string(config_.ram_pages));
  kvm_dirty_log log{};
  log.slot = 0;
  log.dirty_bitmap = dirty_.data();
  Ioctl(fd_, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG", "slot 0");
  uint64_t count = 0;
  for (size_t i = 0; i < dirty_.size(); ++i) {
    count += static_cast<uint64_t>(__builtin_popcountll(dirty_[i]));
    out[i] |= dirty_[i];
  }
  if (manual_protect_ && count > 0) {
    kvm_clear_dirty_log clear{};
    clear.slot = 0;
    clear.first_page = 0;
    clear.num_pages = static_cast<uint32_t>(config_.ram_pages);  // a multiple of 64 (checked by the binding)
    clear.dirty_bitmap = dirty_.data();
    Ioctl(fd_, KVM_CLEAR_DIRTY_LOG, &clear, "KVM_CLEAR_DIRTY_LOG", "slot 0");
  }
  return count;
}

std::vector<VcpuStatus> Vm::Status() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<VcpuStatus> out;
  for (auto& v : vcpus_) out.push_back({v->parked, v->failed, v->exits.load(), v->kicks.load()});
  return out;
}

// Every 20 ms: a vCPU running in KVM_RUN for over 100 ms is kicked out (so a
// pause or a stall is always noticed); one that has neither exited nor
// advanced its progress counter for stall_ms (while the host has not asked
// the guest to stop) is marked stalled, and its
// thread reports it and parks.
void Vm::Watchdog() {
  const auto* ctl = reinterpret_cast<const volatile svt_control*>(ram_->data);
  std::unique_lock<std::mutex> lk(mu_);
  while (!quit_.load()) {
    watchdog_cv_.wait_for(lk, std::chrono::milliseconds(20));
    if (quit_.load()) break;
    const uint64_t now = MonotonicNs();
    for (auto& v : vcpus_) {
      if (v->parked || v->failed) {
        v->wd_since_ns = 0;
        continue;
      }
      const uint64_t exits = v->exits.load();
      const uint64_t progress = v->index < SVT_MAX_VCPUS ? ctl->vcpu[v->index].progress : 0;
      if (v->wd_since_ns == 0 || exits != v->wd_exits || progress != v->wd_progress || ctl->stop != 0) {
        v->wd_exits = exits;
        v->wd_progress = progress;
        v->wd_since_ns = now;
      } else if (now - v->wd_since_ns > config_.stall_ms * 1000000ull) {
        v->stalled.store(true);
        Kick(*v);
      }
      if (v->in_run.load() && now - v->run_start_ns.load() > 100000000ull) Kick(*v);
    }
  }
}

}  // namespace sevtrack::kvm
