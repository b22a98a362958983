// Entering 64-bit long mode directly through KVM_SET_SREGS (no firmware, no
// real-mode boot): identity-mapped 4-level page tables with 2 MiB pages, flat
// 64-bit segments at the profile's privilege level, and the CPUID KVM
// supports with the migration-protocol feature bits of docs/design.md §2.
#pragma once
#include <linux/kvm.h>

#include <cstdint>
#include <string>

namespace sevtrack::kvm {

// CPL0: the helper runs in ring 0 (on KVM-PVM every instruction is emulated:
// slow, deterministic). CPL3: ring 3 with IOPL=3, so `out` needs no exception
// path (native speed on KVM-PVM; exits cost more).
enum class Profile { kCpl0 = 0, kCpl3 = 3 };

// Writes PML4, PDPT and page directories into the firmware slot's memory
// `fw` (guest address fw_gpa): identity maps [0, 2 GiB) with user-accessible
// 2 MiB pages. Returns CR3.
uint64_t BuildPageTables(uint8_t* fw, uint64_t fw_gpa);

// SREGS for long mode at the profile's CPL, starting from the vCPU's current ones.
void LongModeSregs(kvm_sregs* s, uint64_t cr3, Profile profile);

// The entry registers of vCPU `index`: rip = entry, rdi = index, rsp at the
// top of its stack page, IOPL=3 for the CPL3 profile.
kvm_regs EntryRegs(uint64_t entry, uint64_t stack_top, uint32_t index, Profile profile);

// KVM_GET_SUPPORTED_CPUID with leaf 0x40000001 EAX bits 16 and 17
// (KVM_FEATURE_HC_MAP_GPA_RANGE, KVM_FEATURE_MIGRATION_CONTROL) set, applied
// to the vCPU with KVM_SET_CPUID2.
void SetCpuid(int vcpu_fd, const std::string& target);

}  // namespace sevtrack::kvm
