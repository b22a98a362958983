// SEV platform status from the PSP driver (/dev/sev, SEV_ISSUE_CMD with
// SEV_PLATFORM_STATUS), for `sevtrack doctor`. Only read, never changed.
#include <fcntl.h>
#include <linux/psp-sev.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "../addon.h"
#include "sys.h"

namespace sevtrack {
namespace {

const char* StateName(uint8_t s) {
  switch (s) {
    case 0: return "UNINIT";
    case 1: return "INIT";
    case 2: return "WORKING";
    default: return "unknown";
  }
}

// sevPlatformStatus(): { present, ok, error?, apiMajor, apiMinor, state, build, guestCount, flags }
Napi::Value SevPlatformStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
  int fd = open("/dev/sev", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    o.Set("present", err != ENOENT);
    o.Set("ok", false);
    o.Set("error", "open(/dev/sev) failed: " + kvm::ErrnoName(err));
    return o;
  }
  o.Set("present", true);
  sev_user_data_status status;
  memset(&status, 0, sizeof status);
  sev_issue_cmd cmd;
  memset(&cmd, 0, sizeof cmd);
  cmd.cmd = SEV_PLATFORM_STATUS;
  cmd.data = reinterpret_cast<uint64_t>(&status);
  const int r = ioctl(fd, SEV_ISSUE_CMD, &cmd);
  const int err = errno;
  close(fd);
  if (r < 0) {
    o.Set("ok", false);
    o.Set("error", "ioctl(SEV_ISSUE_CMD: SEV_PLATFORM_STATUS) on /dev/sev failed: " + kvm::ErrnoName(err) +
                       " (firmware error " + std::to_string(cmd.error) + ")");
    return o;
  }
  o.Set("ok", true);
  o.Set("apiMajor", status.api_major);
  o.Set("apiMinor", status.api_minor);
  o.Set("state", StateName(status.state));
  o.Set("build", status.build);
  o.Set("guestCount", static_cast<double>(status.guest_count));
  o.Set("flags", static_cast<double>(status.flags));
  return o;
}

}  // namespace

void InitSev(Napi::Env env, Napi::Object exports) {
  exports.Set("sevPlatformStatus", Napi::Function::New(env, SevPlatformStatus));
}

}  // namespace sevtrack
