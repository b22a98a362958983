// One owner per host database (docs/host-protocol.md "Persistence"): an
// exclusive POSIX record lock on a lock file beside the database. The kernel
// releases it when the process dies (kill -9 included), and F_GETLK names the
// holder's pid, so a second `sevtrack serve` can say who owns the database.
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "addon.h"

namespace sevtrack {

namespace {

// lockFile(path, mode): { fd } when this process now holds the lock (kept
// until exit), { holderPid } when another process holds it. Throws with the
// errno for any other failure.
Napi::Value LockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "lockFile(path: string, mode: number)");
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  mode_t mode = static_cast<mode_t>(info[1].As<Napi::Number>().Uint32Value() & 07777);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) {
    int e = errno;
    throw Napi::Error::New(env, "open(" + path + ") for the database lock failed: " + strerror(e));
  }
  fchmod(fd, mode);  // whatever the umask
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  Napi::Object out = Napi::Object::New(env);
  if (fcntl(fd, F_SETLK, &fl) == 0) {
    std::string pid = std::to_string(getpid()) + "\n";
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
      int e = errno;
      close(fd);
      throw Napi::Error::New(env, "writing the pid to " + path + " failed: " + strerror(e));
    }
    out.Set("fd", Napi::Number::New(env, fd));
    return out;
  }
  int e = errno;
  if (e != EACCES && e != EAGAIN) {
    close(fd);
    throw Napi::Error::New(env, "fcntl(F_SETLK) on " + path + " failed: " + strerror(e));
  }
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  int g = fcntl(fd, F_GETLK, &fl);
  close(fd);
  out.Set("holderPid", Napi::Number::New(env, g == 0 && fl.l_type != F_UNLCK ? fl.l_pid : 0));
  return out;
}

// unlockFile(fd): releases the lock by closing the descriptor.
Napi::Value UnlockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "unlockFile(fd: number)");
  close(info[0].As<Napi::Number>().Int32Value());
  return env.Undefined();
}

}  // namespace

void InitLock(Napi::Env env, Napi::Object exports) {
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("unlockFile", Napi::Function::New(env, UnlockFile));
}

}  // namespace sevtrack
