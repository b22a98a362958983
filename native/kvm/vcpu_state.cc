// Save and load of a parked vCPU's state, in the order a VMM restores it
// (QEMU's kvm_arch_put_registers: REGS, XSAVE, XCRS, SREGS, MSRs,
// VCPU_EVENTS, DEBUGREGS). Format (little-endian, docs/kvm.md):
//   "SVTVCPU\0"  u32 version = 1  u32 nsections
//   per section: u32 id  u32 length  length bytes
//   MSR section: u32 count, then count * (u32 index, u32 reserved, u64 value)
#include <cstring>
#include <memory>
#include <stdexcept>

#include "sys.h"
#include "uapi.h"
#include "vm.h"

namespace sevtrack::kvm {

namespace {
constexpr char kMagic[8] = {'S', 'V', 'T', 'V', 'C', 'P', 'U', '\0'};
constexpr uint32_t kVersion = 1;
enum Section : uint32_t { kRegs = 1, kSregs, kXsave, kXcrs, kDebugregs, kEvents, kMsrs };
// MSR_KVM_ASYNC_PF_INT: KVM-PVM refuses to restore it into a second VM.
constexpr uint32_t kSkippedMsr = 0x4b564d06;

void Put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PutSection(std::vector<uint8_t>& out, uint32_t id, const void* data, size_t len) {
  Put32(out, id);
  Put32(out, static_cast<uint32_t>(len));
  const auto* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + len);
}

// One section read by ioctl `req` into a T.
template <typename T>
void SaveSection(std::vector<uint8_t>& out, int fd, uint32_t id, unsigned long req, const char* name,
                 const std::string& target) {
  T value{};
  Ioctl(fd, req, &value, name, target);
  PutSection(out, id, &value, sizeof value);
}

// struct kvm_msrs with room for n entries, in its C layout (uapi.h).
struct MsrBuf {
  struct Head {
    uint32_t nmsrs, pad;
    kvm_msr_entry entries[1];
  };
  std::vector<uint64_t> words;
  Head* msrs() { return reinterpret_cast<Head*>(words.data()); }
  explicit MsrBuf(size_t n) : words(1 + n * sizeof(kvm_msr_entry) / 8 + 2) {}
};
}  // namespace

// The MSRs KVM lists (KVM_GET_MSR_INDEX_LIST) that this vCPU lets us read,
// found once: KVM_GET_MSRS stops at the first it refuses, which is dropped.
uint64_t Vm::MsrListFor(Vcpu& v) {
  if (!msrs_.empty()) return msrs_.size();
  auto list = std::make_unique<uapi::MsrList<1024>>();
  list->nmsrs = 1024;
  Ioctl(KvmFd(), uapi::kGetMsrIndexList, list.get(), "KVM_GET_MSR_INDEX_LIST", "/dev/kvm");
  std::vector<uint32_t> candidates;
  for (uint32_t i = 0; i < list->nmsrs; ++i)
    if (list->indices[i] != kSkippedMsr) candidates.push_back(list->indices[i]);
  while (!candidates.empty()) {
    MsrBuf m(candidates.size());
    m.msrs()->nmsrs = static_cast<uint32_t>(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) m.msrs()->entries[i].index = candidates[i];
    const int n = Ioctl(v.fd, uapi::kGetMsrs, m.msrs(), "KVM_GET_MSRS", Target(v));
    if (static_cast<size_t>(n) == candidates.size()) break;
    candidates.erase(candidates.begin() + n);
  }
  msrs_ = candidates;
  return msrs_.size();
}

std::vector<uint8_t> Vm::SaveVcpu(uint32_t index) {
  if (index >= vcpus_.size()) throw std::invalid_argument("vcpu " + std::to_string(index) + " does not exist");
  Vcpu& v = *vcpus_[index];
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (started_ && (!pause_req_.load() || !v.parked)) throw std::runtime_error(Target(v) + " is running; pause the VM before saving its state");
  }
  const std::string t = Target(v);
  std::vector<uint8_t> out(kMagic, kMagic + 8);
  Put32(out, kVersion);
  Put32(out, 7);
  SaveSection<kvm_regs>(out, v.fd, kRegs, KVM_GET_REGS, "KVM_GET_REGS", t);
  SaveSection<kvm_sregs>(out, v.fd, kSregs, KVM_GET_SREGS, "KVM_GET_SREGS", t);
  SaveSection<uapi::Xsave>(out, v.fd, kXsave, uapi::kGetXsave, "KVM_GET_XSAVE", t);
  SaveSection<kvm_xcrs>(out, v.fd, kXcrs, KVM_GET_XCRS, "KVM_GET_XCRS", t);
  SaveSection<kvm_debugregs>(out, v.fd, kDebugregs, KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", t);
  SaveSection<kvm_vcpu_events>(out, v.fd, kEvents, KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", t);
  const size_t n = MsrListFor(v);
  MsrBuf m(n);
  m.msrs()->nmsrs = static_cast<uint32_t>(n);
  for (size_t i = 0; i < n; ++i) m.msrs()->entries[i].index = msrs_[i];
  const int got = Ioctl(v.fd, uapi::kGetMsrs, m.msrs(), "KVM_GET_MSRS", t);
  std::vector<uint8_t> msr_bytes;
  Put32(msr_bytes, static_cast<uint32_t>(got));
  const auto* e = reinterpret_cast<const uint8_t*>(m.msrs()->entries);
  msr_bytes.insert(msr_bytes.end(), e, e + static_cast<size_t>(got) * sizeof(kvm_msr_entry));
  PutSection(out, kMsrs, msr_bytes.data(), msr_bytes.size());
  return out;
}

void Vm::LoadVcpu(uint32_t index, const uint8_t* data, size_t size) {
  if (index >= vcpus_.size()) throw std::invalid_argument("vcpu " + std::to_string(index) + " does not exist");
  Vcpu& v = *vcpus_[index];
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (started_ && (!pause_req_.load() || !v.parked)) throw std::runtime_error(Target(v) + " is running; pause the VM before loading state");
  }
  auto bad = [](size_t off, const std::string& expected, const std::string& got) {
    return std::invalid_argument("vCPU state: expected " + expected + " at offset " + std::to_string(off) + ", got " + got);
  };
  auto get32 = [&](size_t off) {
    if (off + 4 > size) throw bad(off, "4 more bytes", "end of data");
    uint32_t x;
    memcpy(&x, data + off, 4);
    return x;
  };
  if (size < 16 || memcmp(data, kMagic, 8) != 0) throw bad(0, "magic SVTVCPU", "other bytes");
  if (get32(8) != kVersion) throw bad(8, "version 1", std::to_string(get32(8)));
  const uint32_t nsec = get32(12);
  const uint8_t* sec[8] = {};
  size_t len[8] = {};
  size_t off = 16;
  for (uint32_t i = 0; i < nsec; ++i) {
    const uint32_t id = get32(off), l = get32(off + 4);
    if (id < kRegs || id > kMsrs) throw bad(off, "a section id 1-7", std::to_string(id));
    if (off + 8 + l > size) throw bad(off + 4, "a length within the data", std::to_string(l));
    sec[id] = data + off + 8;
    len[id] = l;
    off += 8 + l;
  }
  const size_t want[8] = {0, sizeof(kvm_regs), sizeof(kvm_sregs), sizeof(uapi::Xsave), sizeof(kvm_xcrs),
                          sizeof(kvm_debugregs), sizeof(kvm_vcpu_events), 0};
  for (uint32_t id = kRegs; id <= kMsrs; ++id) {
    if (sec[id] == nullptr) throw bad(off, "section " + std::to_string(id), "none");
    if (id != kMsrs && len[id] != want[id]) throw bad(0, "section " + std::to_string(id) + " of " + std::to_string(want[id]) + " bytes", std::to_string(len[id]));
  }
  const std::string t = Target(v);
  Ioctl(v.fd, KVM_SET_REGS, sec[kRegs], "KVM_SET_REGS", t);
  Ioctl(v.fd, uapi::kSetXsave, sec[kXsave], "KVM_SET_XSAVE", t);
  Ioctl(v.fd, KVM_SET_XCRS, sec[kXcrs], "KVM_SET_XCRS", t);
  Ioctl(v.fd, KVM_SET_SREGS, sec[kSregs], "KVM_SET_SREGS", t);
  uint32_t count;
  memcpy(&count, sec[kMsrs], 4);
  if (len[kMsrs] != 4 + count * sizeof(kvm_msr_entry)) throw bad(0, "an MSR section of " + std::to_string(count) + " entries", std::to_string(len[kMsrs]) + " bytes");
  MsrBuf m(count);
  m.msrs()->nmsrs = count;
  memcpy(m.msrs()->entries, sec[kMsrs] + 4, count * sizeof(kvm_msr_entry));
  const int set = Ioctl(v.fd, uapi::kSetMsrs, m.msrs(), "KVM_SET_MSRS", t);
  if (static_cast<uint32_t>(set) != count)
    throw SysError("ioctl(KVM_SET_MSRS) on " + t + " refused MSR " + Hex(m.msrs()->entries[set].index), EINVAL);
  Ioctl(v.fd, KVM_SET_VCPU_EVENTS, sec[kEvents], "KVM_SET_VCPU_EVENTS", t);
  Ioctl(v.fd, KVM_SET_DEBUGREGS, sec[kDebugregs], "KVM_SET_DEBUGREGS", t);
  if (sync_regs_) v.run->kvm_dirty_regs = 0;  // the loaded REGS win over a stale sync area
}

}  // namespace sevtrack::kvm
