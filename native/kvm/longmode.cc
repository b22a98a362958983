#include "longmode.h"

#include <cstring>
#include <memory>

#include "sys.h"
#include "uapi.h"

namespace sevtrack::kvm {

namespace {
constexpr uint64_t kPresent = 1, kWrite = 2, kUser = 4, kHuge = 0x80;
constexpr uint64_t kCr0Pe = 1, kCr0Mp = 2, kCr0Et = 0x10, kCr0Ne = 0x20, kCr0Wp = 0x10000, kCr0Am = 0x40000,
                   kCr0Pg = 0x80000000ull;
constexpr uint64_t kCr4Pae = 0x20, kCr4Osfxsr = 0x200, kCr4Osxmmexcpt = 0x400;
constexpr uint64_t kEferLme = 0x100, kEferLma = 0x400;
}  // namespace

uint64_t BuildPageTables(uint8_t* fw, uint64_t fw_gpa) {
  auto* pml4 = reinterpret_cast<uint64_t*>(fw + 0x1000);
  auto* pdpt = reinterpret_cast<uint64_t*>(fw + 0x2000);
  memset(fw + 0x1000, 0, 0x4000);
  pml4[0] = (fw_gpa + 0x2000) | kPresent | kWrite | kUser;
  for (uint64_t gib = 0; gib < 2; ++gib) {
    auto* pd = reinterpret_cast<uint64_t*>(fw + 0x3000 + gib * 0x1000);
    pdpt[gib] = (fw_gpa + 0x3000 + gib * 0x1000) | kPresent | kWrite | kUser;
    for (uint64_t i = 0; i < 512; ++i) pd[i] = ((gib << 30) + (i << 21)) | kPresent | kWrite | kUser | kHuge;
  }
  return fw_gpa + 0x1000;
}

void LongModeSregs(kvm_sregs* s, uint64_t cr3, Profile profile) {
  const uint8_t cpl = static_cast<uint8_t>(profile);
  kvm_segment code{};
  code.base = 0;
  code.limit = 0xffffffff;
  code.selector = static_cast<uint16_t>(0x8 | cpl);
  code.type = 11;  // execute/read, accessed
  code.present = 1;
  code.dpl = cpl;
  code.s = 1;
  code.l = 1;
  code.g = 1;
  kvm_segment data = code;
  data.selector = static_cast<uint16_t>(0x10 | cpl);
  data.type = 3;  // read/write, accessed
  data.l = 0;
  data.db = 1;
  s->cs = code;
  s->ds = s->es = s->fs = s->gs = s->ss = data;
  s->cr3 = cr3;
  s->cr4 = kCr4Pae | kCr4Osfxsr | kCr4Osxmmexcpt;
  s->cr0 = kCr0Pe | kCr0Mp | kCr0Et | kCr0Ne | kCr0Wp | kCr0Am | kCr0Pg;
  s->efer = kEferLme | kEferLma;
}

kvm_regs EntryRegs(uint64_t entry, uint64_t stack_top, uint32_t index, Profile profile) {
  kvm_regs r{};
  r.rip = entry;
  r.rdi = index;
  r.rsp = stack_top - 8;  // as after a call: (rsp + 8) is 16-byte aligned
  r.rflags = 0x2 | (profile == Profile::kCpl3 ? (3u << 12) : 0u);
  return r;
}

void SetCpuid(int vcpu_fd, const std::string& target) {
  constexpr uint32_t kMax = 256;
  auto cpuid = std::make_unique<uapi::Cpuid<kMax>>();
  cpuid->nent = kMax - 2;
  Ioctl(KvmFd(), uapi::kGetSupportedCpuid, cpuid.get(), "KVM_GET_SUPPORTED_CPUID", "/dev/kvm");
  bool found = false;
  for (uint32_t i = 0; i < cpuid->nent; ++i) {
    if (cpuid->entries[i].function == 0x40000001) {
      cpuid->entries[i].eax |= (1u << 16) | (1u << 17);
      found = true;
    }
  }
  if (!found && cpuid->nent + 2 <= kMax) {
    kvm_cpuid_entry2 sig{};
    sig.function = 0x40000000;
    sig.eax = 0x40000001;
    memcpy(&sig.ebx, "KVMK", 4);
    memcpy(&sig.ecx, "VMKV", 4);
    memcpy(&sig.edx, "M\0\0\0", 4);
    kvm_cpuid_entry2 feat{};
    feat.function = 0x40000001;
    feat.eax = (1u << 16) | (1u << 17);
    cpuid->entries[cpuid->nent++] = sig;
    cpuid->entries[cpuid->nent++] = feat;
  }
  Ioctl(vcpu_fd, uapi::kSetCpuid2, cpuid.get(), "KVM_SET_CPUID2", target);
}

}  // namespace sevtrack::kvm
