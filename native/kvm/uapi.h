// The ioctls whose argument structs end in a flexible array. linux/kvm.h
// declares those with __DECLARE_FLEX_ARRAY, whose empty struct has size 1
// in C++, so sizeof differs from C and the _IOC numbers derived from it are
// wrong (KVM answers EINVAL). These are the C sizes, and C layouts to go with them.
#pragma once
#include <linux/kvm.h>

#include <cstdint>

namespace sevtrack::kvm::uapi {

constexpr unsigned long kGetSupportedCpuid = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, 8);
constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, 8);
constexpr unsigned long kGetMsrIndexList = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x02, 4);
constexpr unsigned long kGetMsrs = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x88, 8);
constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, 8);
constexpr unsigned long kGetXsave = _IOC(_IOC_READ, KVMIO, 0xa4, 4096);
constexpr unsigned long kSetXsave = _IOC(_IOC_WRITE, KVMIO, 0xa5, 4096);

template <uint32_t N>
struct Cpuid {
  uint32_t nent, padding;
  kvm_cpuid_entry2 entries[N];
};

template <uint32_t N>
struct MsrList {
  uint32_t nmsrs;
  uint32_t indices[N];
};

struct Xsave {
  uint32_t region[1024];
};

}  // namespace sevtrack::kvm::uapi
