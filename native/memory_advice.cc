// Advice to the kernel about guest memory, as a VMM gives it for guest RAM:
// transparent huge pages (MADV_HUGEPAGE), and every page resident before it
// is used (resident_memory.h). Sim guests take both: a running guest's memory
// is resident from launch, as an SEV guest's pinned memory is, and a
// destination that knows the guest's size prepares its memory before its
// source connects; so such a migration takes no first-touch fault on either
// side (a destination allocating at the HELLO faults as pages arrive).
// Zeroing fresh huge pages on first write was erratic on a 2-core VM
// (0.1-2.5 s of kernel time per GiB, depending on whether the host had
// backed those frames): made resident before the migration, that cost is out
// of its path, and a resident huge page then costs half what a 4 KiB one does
// to copy into under shadow paging (a 1 GiB memcpy: 0.09-0.10 s against
// 0.21-0.24 s).
//
// Only the 2 MiB-aligned interior of the buffer is advised (THP needs whole,
// aligned huge pages; the edges stay 4 KiB). The advice is a hint: where the
// kernel has THP off ("never") nothing is advised, and the result says so.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "addon.h"
#include "page_args.h"
#include "resident_memory.h"

namespace sevtrack {

namespace {

// adviseHugePages(memory: Uint8Array) -> { advisedBytes, mode }
Napi::Value AdviseHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, 0, "memory");
  std::string mode = ThpMode();
  size_t advised = 0;
  try {
    advised = AdviseHugeInterior(memory.Data(), memory.ByteLength(), mode);
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, std::string(e.what()) + " on guest memory");
  }
  auto out = Napi::Object::New(env);
  out.Set("advisedBytes", Napi::Number::New(env, static_cast<double>(advised)));
  out.Set("mode", Napi::String::New(env, mode));
  return out;
}

// prefaultMemory(memory: Uint8Array) -> { populatedBytes, touchedBytes, error }
// Makes every page that holds a byte of memory resident and writable without
// changing any content (rounded outward: the pages at either end, shared
// with whatever lies beside the buffer, are mapped already). First
// MADV_POPULATE_WRITE (Linux 5.14: the kernel maps them in one call), then a
// write from user space to each page (TouchPages: under shadow paging the
// first user access faults again in the host even after populating; on a
// kernel without MADV_POPULATE_WRITE the touch alone maps them). A
// destination started for a guest of known size, and a running guest's
// memory at launch, take their one fault per page here, as a VMM that
// preallocates (an SEV VMM pins) guest RAM does, instead of on the
// migration's path. A kernel without MADV_POPULATE_WRITE (EINVAL) leaves
// the touch alone to map the pages; any other failure (ENOMEM: the machine
// cannot back the memory; EFAULT, EHWPOISON) touches nothing, since writing
// the pages would only meet the same failure as SIGBUS or the OOM killer:
// `error` says why and touchedBytes is 0.
Napi::Value PrefaultMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, 0, "memory");
  auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  auto begin = reinterpret_cast<uintptr_t>(memory.Data()) & ~(page - 1);
  auto end = (reinterpret_cast<uintptr_t>(memory.Data()) + memory.ByteLength() + page - 1) & ~(page - 1);
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
  std::string error;
  size_t populated = 0, touched = 0;
  if (end > begin) {
    int failure = 0;
    if (madvise(reinterpret_cast<void*>(begin), end - begin, kPopulateWrite) == 0) {
      populated = end - begin;
    } else {
      failure = errno;
      error = std::string("madvise(MADV_POPULATE_WRITE): ") + std::strerror(failure);
    }
    if (failure == 0 || failure == EINVAL) {
      TouchPages(begin, end, page);
      touched = end - begin;
    }
  }
  auto out = Napi::Object::New(env);
  out.Set("populatedBytes", Napi::Number::New(env, static_cast<double>(populated)));
  out.Set("touchedBytes", Napi::Number::New(env, static_cast<double>(touched)));
  out.Set("error", error.empty() ? env.Null() : Napi::String::New(env, error));
  return out;
}

// hugePageOffset(memory: Uint8Array) -> bytes from memory's first byte to
// the first 2 MiB boundary at or after it. JavaScript cannot see addresses,
// and a buffer meant to lie on whole huge pages (src/common/resident-buffer.ts)
// is carved out of a larger one from that boundary.
Napi::Value HugePageOffset(const Napi::CallbackInfo& info) {
  auto memory = GetBytes(info, 0, "memory");
  auto address = reinterpret_cast<uintptr_t>(memory.Data());
  auto offset = (kHugePageBytes - address % kHugePageBytes) % kHugePageBytes;
  return Napi::Number::New(info.Env(), static_cast<double>(offset));
}

// releaseMemory(memory: Uint8Array) -> { releasedBytes }
// Gives the whole pages inside memory back to the kernel (MADV_DONTNEED:
// they read as zero afterwards), as a VMM does when it destroys a VM whose
// guest has moved on: its RSS falls at once, not when the JavaScript
// object holding the memory is collected. Only pages wholly inside the
// buffer are released (the edges are shared with whatever lies beside it).
Napi::Value ReleaseMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, 0, "memory");
  auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  auto begin = (reinterpret_cast<uintptr_t>(memory.Data()) + page - 1) & ~(page - 1);
  auto end = (reinterpret_cast<uintptr_t>(memory.Data()) + memory.ByteLength()) & ~(page - 1);
  size_t released = 0;
  if (end > begin) {
    if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) {
      throw Napi::Error::New(env, std::string("madvise(MADV_DONTNEED) on guest memory failed: ") +
                                      std::strerror(errno));
    }
    released = end - begin;
  }
  auto out = Napi::Object::New(env);
  out.Set("releasedBytes", Napi::Number::New(env, static_cast<double>(released)));
  return out;
}

}  // namespace

void InitMemoryAdvice(Napi::Env env, Napi::Object exports) {
  exports.Set("adviseHugePages", Napi::Function::New(env, AdviseHugePages));
  exports.Set("prefaultMemory", Napi::Function::New(env, PrefaultMemory));
  exports.Set("releaseMemory", Napi::Function::New(env, ReleaseMemory));
  exports.Set("hugePageOffset", Napi::Function::New(env, HugePageOffset));
}

}  // namespace sevtrack
