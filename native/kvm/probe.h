// What this host's KVM offers, measured rather than assumed: capabilities,
// whether a vCPU entered in long mode through KVM_SET_SREGS runs at CPL0 and
// CPL3 and gets the shim's return value back in RAX, and whether `vmcall`
// reaches userspace as KVM_EXIT_HYPERCALL (it does on VMX/SVM; on KVM-PVM it
// never returns at CPL0). Used by `sevtrack doctor` and to choose the shim.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sevtrack::kvm {

struct RunProbe {
  bool ok = false;
  std::string detail;  // what happened, or why it failed
};

struct ProbeResult {
  bool available = false;
  std::string reason;  // why not, when !available
  int api_version = 0;
  std::vector<std::pair<std::string, int>> caps;
  RunProbe cpl0, cpl3, vmcall;
};

// Runs the probes once per process (each VM lives < 1 s); later calls return the cached result.
const ProbeResult& Probe();

}  // namespace sevtrack::kvm
