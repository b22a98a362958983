// A minimal VMM over /dev/kvm: one VM with a dirty-logged RAM slot and an
// unlogged firmware slot (key page and page tables), vCPU threads in 64-bit
// long mode, exits handled here, and a per-vCPU ordered queue of records
// that JavaScript drains in batches.
//
// Ordering rules (docs/kvm.md):
// - A hypercall's record is queued before the guest's call returns (the
//   return value is written to RAX only after the push).
// - Records of one vCPU are drained in the order the vCPU produced them.
// - Pause returns only when every vCPU is parked at a clean point: its last
//   exit was completed by one KVM_RUN with immediate_exit = 1, so the saved
//   vCPU state holds no half-done I/O.
#pragma once
#include <linux/kvm.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "longmode.h"

namespace sevtrack::kvm {

enum RecordKind : uint64_t { kHypercall = 0, kEvent = 1, kFatal = 2 };

// One entry of a vCPU's queue. kHypercall: (nr, a0, a1, a2) and the value
// returned to the guest. kEvent: a0 = event, a1 = argument. kFatal: a0 = exit
// reason (or 0 for a watchdog stall / failed ioctl), a1 = detail; message says.
struct Record {
  uint64_t kind, vcpu, seq, nr, a0, a1, a2, ret;
};

// Anonymous shared memory, unmapped when the last owner (the VM or a
// JavaScript ArrayBuffer over it) lets go.
struct Mapping {
  uint8_t* data = nullptr;
  size_t size = 0;
  explicit Mapping(size_t bytes, const char* what);
  ~Mapping();
};

enum class ShimMode { kPortIo = 0, kVmcall = 1 };

struct VmConfig {
  uint64_t ram_pages = 0;
  uint32_t vcpus = 1;
  Profile profile = Profile::kCpl3;
  // Use KVM_CLEAR_DIRTY_LOG with manual protect where the host offers it.
  bool manual_protect = true;
  ShimMode shim = ShimMode::kPortIo;
  uint64_t key[2] = {0, 0};
  // A vCPU that neither exits nor advances its progress counter for this
  // long is reported stalled (a kFatal record) and parked.
  uint64_t stall_ms = 10000;
};

class Vm;

struct Vcpu {
  Vm* vm = nullptr;
  uint32_t index = 0;
  int fd = -1;
  kvm_run* run = nullptr;
  size_t run_size = 0;
  std::thread thread;
  pthread_t tid{};
  std::atomic<bool> in_run{false};
  std::atomic<uint64_t> run_start_ns{0};
  std::atomic<uint64_t> exits{0};
  std::atomic<uint64_t> kicks{0};
  std::atomic<bool> stalled{false};
  bool parked = false;  // guarded by Vm::mu_
  bool failed = false;  // guarded by Vm::mu_
  uint64_t seq = 0;     // records produced (the vCPU thread only)
  uint64_t rest_due_ns = 0;  // the end of the current paced millisecond (the vCPU thread only)
  // Watchdog bookkeeping (the watchdog thread only).
  uint64_t wd_exits = 0, wd_progress = 0, wd_since_ns = 0;
  std::mutex qmu;
  std::vector<Record> queue;
  std::vector<std::string> messages;  // one per kFatal record, in order
};

struct VcpuStatus {
  bool parked, failed;
  uint64_t exits, kicks;
};

class Vm {
 public:
  explicit Vm(const VmConfig& config);
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  const VmConfig& config() const { return config_; }
  std::shared_ptr<Mapping> ram() const { return ram_; }
  uint8_t* fw() const { return fw_->data; }
  bool manual_protect() const { return manual_protect_; }
  bool sync_regs() const { return sync_regs_; }
  uint32_t vcpu_count() const { return static_cast<uint32_t>(vcpus_.size()); }

  // Called (from a vCPU thread) when a queue goes from empty to non-empty and
  // no notification is pending; Drain re-arms it.
  void SetNotify(std::function<void()> notify) { notify_ = std::move(notify); }

  // Starts the vCPU threads (parked) and the watchdog. Idempotent.
  void Start();
  // Parks every vCPU at a clean point; throws if one does not park within timeout_ms.
  void Pause(uint64_t timeout_ms);
  void Resume();
  bool paused() const { return pause_req_.load(); }
  // Stops the threads and closes the descriptors. Idempotent.
  void Close();

  // Every queued record of every vCPU (each vCPU's in order), and the
  // messages of the kFatal records among them, in the same order.
  std::vector<Record> Drain(std::vector<std::string>* messages);

  // ORs the dirty pages of the RAM slot since the last harvest into
  // out[0..nwords) (bit i = gfn i) and clears them in KVM
  // (KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG under manual protect).
  // Returns how many pages were dirty. The caller copies pages only after
  // this returns, so a write racing with the harvest is in the copy or in
  // the next harvest.
  uint64_t HarvestDirty(uint64_t* out, size_t nwords);

  // Serialized vCPU state (docs/kvm.md); the vCPU must be parked.
  std::vector<uint8_t> SaveVcpu(uint32_t index);
  void LoadVcpu(uint32_t index, const uint8_t* data, size_t size);

  std::vector<VcpuStatus> Status();

  // Used by the vCPU threads.
  void Push(Vcpu& v, Record r, std::string message = {});
  void Loop(Vcpu& v);

 private:
  void CreateVcpu(uint32_t index);
  void ParkUntilResumed(Vcpu& v);
  bool HandleExit(Vcpu& v);
  // SVT_EVENT_REST: holds the vCPU until its paced millisecond is over.
  void Rest(Vcpu& v);
  void HandleShim(Vcpu& v, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t* ret);
  void Fail(Vcpu& v, uint64_t reason, uint64_t detail, const std::string& message);
  void Kick(Vcpu& v);
  void Watchdog();
  std::string Target(const Vcpu& v) const { return "vCPU " + std::to_string(v.index); }
  uint64_t MsrListFor(Vcpu& v);

  VmConfig config_;
  int fd_ = -1;
  bool manual_protect_ = false;
  bool sync_regs_ = false;
  std::shared_ptr<Mapping> ram_;
  std::unique_ptr<Mapping> fw_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::vector<uint64_t> dirty_;
  std::vector<uint32_t> msrs_;  // the MSRs this host lets us read, found on first save
  std::mutex dirty_mu_;

  std::mutex mu_;
  std::condition_variable resume_cv_;
  std::condition_variable parked_cv_;
  std::atomic<bool> pause_req_{true};
  std::atomic<bool> quit_{false};
  bool started_ = false;
  bool closed_ = false;
  std::thread watchdog_;
  std::condition_variable watchdog_cv_;
  std::atomic<bool> notify_pending_{false};
  std::function<void()> notify_;
};

}  // namespace sevtrack::kvm
