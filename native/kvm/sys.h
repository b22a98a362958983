// System-level helpers of the kvm backend: the lazily opened /dev/kvm,
// ioctl wrappers whose errors name the ioctl, the object and the errno
// (`ioctl(KVM_GET_DIRTY_LOG) on slot 0 failed: EINVAL`), and the signal used
// to kick a vCPU thread out of KVM_RUN.
#pragma once
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace sevtrack::kvm {

// A failed system call: what failed and the errno it failed with.
class SysError : public std::runtime_error {
 public:
  SysError(const std::string& what, int err);
  int err() const { return err_; }

 private:
  int err_;
};

// /dev/kvm could not be opened or is not a usable KVM (the reason says which).
class UnavailableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "EINVAL" for EINVAL; "errno 1234" when the name is unknown.
std::string ErrnoName(int err);

// ioctl(fd, req, arg); on failure throws SysError
// "ioctl(<name>) on <target> failed: <ERRNO>". Returns the ioctl's result.
int Ioctl(int fd, unsigned long req, const void* arg, const char* name, const std::string& target);

// The process-wide /dev/kvm descriptor, opened on first use. Throws
// UnavailableError when it is missing, not accessible, or of another API
// version than 12.
int KvmFd();

// KVM_CHECK_EXTENSION on /dev/kvm (or on a VM fd); 0 when unsupported.
int CheckExtension(int fd, int cap);

// The real-time signal that interrupts KVM_RUN (its handler does nothing;
// installed once, without SA_RESTART, so KVM_RUN returns EINTR).
int KickSignal();

uint64_t MonotonicNs();

// "0x1f" for 31.
std::string Hex(uint64_t v);

}  // namespace sevtrack::kvm
