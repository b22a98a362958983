#include "sys.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace sevtrack::kvm {

SysError::SysError(const std::string& what, int err) : std::runtime_error(what + ": " + ErrnoName(err)), err_(err) {}

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "errno " + std::to_string(err);
}

int Ioctl(int fd, unsigned long req, const void* arg, const char* name, const std::string& target) {
  int r;
  do {
    r = ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR && req != KVM_RUN);
  if (r < 0) throw SysError(std::string("ioctl(") + name + ") on " + target + " failed", errno);
  return r;
}

namespace {
std::once_flag open_once;
int kvm_fd = -1;
std::string unavailable;

void OpenKvm() {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    unavailable = "open(/dev/kvm) failed: " + ErrnoName(err) +
                  (err == ENOENT   ? " (no KVM on this host: load kvm_intel, kvm_amd or kvm_pvm)"
                   : err == EACCES ? " (run as root or join the group owning /dev/kvm)"
                                   : "");
    return;
  }
  int api = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) {
    unavailable = "KVM_GET_API_VERSION returned " + std::to_string(api) + ", expected " +
                  std::to_string(KVM_API_VERSION);
    close(fd);
    return;
  }
  kvm_fd = fd;
}
}  // namespace

int KvmFd() {
  std::call_once(open_once, OpenKvm);
  if (kvm_fd < 0) throw UnavailableError(unavailable);
  return kvm_fd;
}

int CheckExtension(int fd, int cap) {
  int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

namespace {
std::once_flag signal_once;
void NoopHandler(int) {}
}  // namespace

int KickSignal() {
  int sig = SIGRTMIN + 3;
  std::call_once(signal_once, [sig] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = NoopHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(sig, &sa, nullptr);
  });
  return sig;
}

uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace sevtrack::kvm
