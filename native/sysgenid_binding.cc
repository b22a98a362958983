// sysgenid's native pieces: the counter file (one page, mapped MAP_SHARED and
// updated in place with an atomic 4-byte store, then its mtime touched), the
// peer credentials of a Unix socket (SO_PEERCRED), and the probe loops the
// benchmark compares (a load from the mapping against a pread of the file).
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "addon.h"
#include "include/sysgenid.h"

namespace sevtrack {
namespace {

// One open counter file. Freed (unmapped, closed) by close() or by the GC.
struct Counter {
  int fd = -1;
  volatile uint32_t* page = nullptr;
  std::string path;
};

void CloseCounter(Counter* c) {
  if (c->page != nullptr) munmap(const_cast<uint32_t*>(c->page), SYSGENID_FILE_BYTES);
  if (c->fd >= 0) close(c->fd);
  c->page = nullptr;
  c->fd = -1;
}

[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& what, int err) {
  const char* found = strerrorname_np(err);
  std::string name = found != nullptr ? found : "errno " + std::to_string(err);
  Napi::Error e = Napi::Error::New(env, what + " failed: " + name + " (" + strerror(err) + ")");
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, name));
  throw e;
}

std::string GetPath(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || !info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), "path must be a string");
  }
  return info[index].As<Napi::String>().Utf8Value();
}

Counter* GetCounter(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "handle must be a counter handle from sysgenidCounterOpen");
  }
  Counter* c = info[0].As<Napi::External<Counter>>().Data();
  if (c->page == nullptr) throw Napi::Error::New(info.Env(), "counter file " + c->path + " is already closed");
  return c;
}

uint32_t GetU32(const Napi::CallbackInfo& info, size_t index, const char* name) {
  uint64_t v = GetIndex(info, index, name);
  if (v > 0xffffffffu) throw Napi::RangeError::New(info.Env(), std::string(name) + " must fit in a u32");
  return static_cast<uint32_t>(v);
}

// sysgenidCounterOpen(path): opens (creating it 0644 if missing) the counter
// file, grows it to one page if it is shorter (never shrinks it), maps the
// page shared and read-write, stamps the magic and version at offset 8 and
// returns the handle. Offset 0 is left as it is: the service resumes from it.
Napi::Value CounterOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = GetPath(info, 0);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) ThrowErrno(env, "open(" + path + ")", errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "fstat(" + path + ")", err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    throw Napi::Error::New(env, "counter file " + path + " is not a regular file; choose another --counter-file");
  }
  if (st.st_size < static_cast<off_t>(SYSGENID_FILE_BYTES) && ftruncate(fd, SYSGENID_FILE_BYTES) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "ftruncate(" + path + ", 4096)", err);
  }
  void* p = mmap(nullptr, SYSGENID_FILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "mmap(" + path + ", MAP_SHARED)", err);
  }
  auto* c = new Counter{fd, static_cast<volatile uint32_t*>(p), path};
  auto* bytes = static_cast<volatile uint8_t*>(p);
  for (unsigned i = 0; i < 4; ++i) bytes[SYSGENID_FILE_MAGIC_OFFSET + i] = (SYSGENID_FILE_MAGIC >> (8 * i)) & 0xff;
  bytes[SYSGENID_FILE_VERSION_OFFSET] = SYSGENID_FILE_VERSION & 0xff;
  bytes[SYSGENID_FILE_VERSION_OFFSET + 1] = (SYSGENID_FILE_VERSION >> 8) & 0xff;
  return Napi::External<Counter>::New(env, c, [](Napi::Env, Counter* dead) {
    CloseCounter(dead);
    delete dead;
  });
}

// sysgenidCounterStore(handle, value): one atomic 4-byte release store of the
// little-endian value at offset 0, then an mtime touch (futimens) so inotify
// and mtime watchers see the change. Ordering rule: the store comes first, so
// a reader woken by the mtime change always loads the new value.
Napi::Value CounterStore(const Napi::CallbackInfo& info) {
  Counter* c = GetCounter(info);
  uint32_t v = GetU32(info, 1, "value");
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  __atomic_store_n(c->page, v, __ATOMIC_RELEASE);
  if (futimens(c->fd, nullptr) != 0) ThrowErrno(info.Env(), "futimens(" + c->path + ")", errno);
  return info.Env().Undefined();
}

// sysgenidCounterLoad(handle): one atomic load of offset 0.
Napi::Value CounterLoad(const Napi::CallbackInfo& info) {
  Counter* c = GetCounter(info);
  return Napi::Number::New(info.Env(), sysgenid_load(c->page));
}

// sysgenidCounterClose(handle): unmaps and closes; a second close is a no-op.
Napi::Value CounterClose(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "handle must be a counter handle from sysgenidCounterOpen");
  }
  CloseCounter(info[0].As<Napi::External<Counter>>().Data());
  return info.Env().Undefined();
}

// sysgenidPeerCredentials(fd): { pid, uid, gid } of the process that
// connected the Unix socket fd (SO_PEERCRED: the credentials at connect()).
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t fd = GetIndex(info, 0, "fd");
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ThrowErrno(env, "getsockopt(fd " + std::to_string(fd) + ", SO_PEERCRED)", errno);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// sysgenidProbeLoop(path, mode, iterations): the benchmark kernel. Opens path
// read-only and checks the generation `iterations` times, either with one
// load from a PROT_READ MAP_SHARED mapping ("map", what a C client does) or
// with one pread of 4 bytes at offset 0 ("pread"); returns the elapsed
// nanoseconds of the loop alone (open and mmap are outside the timing).
Napi::Value ProbeLoop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = GetPath(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "mode must be \"map\" or \"pread\"");
  std::string mode = info[1].As<Napi::String>().Utf8Value();
  if (mode != "map" && mode != "pread") throw Napi::RangeError::New(env, "mode must be \"map\" or \"pread\", got \"" + mode + "\"");
  uint64_t iterations = GetIndex(info, 2, "iterations");
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open(" + path + ")", errno);
  uint64_t sum = 0;
  uint64_t elapsed = 0;
  if (mode == "map") {
    void* p = mmap(nullptr, SYSGENID_FILE_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      ThrowErrno(env, "mmap(" + path + ", PROT_READ)", err);
    }
    uint64_t start = NowNs();
    for (uint64_t i = 0; i < iterations; ++i) sum += sysgenid_load(p);
    elapsed = NowNs() - start;
    munmap(p, SYSGENID_FILE_BYTES);
  } else {
    uint64_t start = NowNs();
    for (uint64_t i = 0; i < iterations; ++i) {
      uint32_t v = 0;
      if (pread(fd, &v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
        int err = errno;
        close(fd);
        ThrowErrno(env, "pread(" + path + ")", err);
      }
      sum += v;
    }
    elapsed = NowNs() - start;
  }
  close(fd);
  // The sum keeps the loads alive; it is returned so no compiler can drop them.
  Napi::Object out = Napi::Object::New(env);
  out.Set("elapsedNs", Napi::Number::New(env, static_cast<double>(elapsed)));
  out.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  return out;
}

}  // namespace

void InitSysgenid(Napi::Env env, Napi::Object exports) {
  exports.Set("sysgenidCounterOpen", Napi::Function::New(env, CounterOpen));
  exports.Set("sysgenidCounterStore", Napi::Function::New(env, CounterStore));
  exports.Set("sysgenidCounterLoad", Napi::Function::New(env, CounterLoad));
  exports.Set("sysgenidCounterClose", Napi::Function::New(env, CounterClose));
  exports.Set("sysgenidPeerCredentials", Napi::Function::New(env, PeerCredentials));
  exports.Set("sysgenidProbeLoop", Napi::Function::New(env, ProbeLoop));
}

}  // namespace sevtrack
