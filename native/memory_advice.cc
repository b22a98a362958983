// Advice to the kernel about guest memory, as a VMM gives it for guest RAM:
// transparent huge pages (MADV_HUGEPAGE). The sim backend gives it for a
// running guest's memory: the migration source reads every page, and a page
// the guest never wrote then maps the huge zero page, one fault per 2 MiB
// instead of one per 4 KiB page (a fault costs about as much as the page's
// whole copy and MAC). A destination's fresh memory stays at 4 KiB: measured
// on a 2-core VM, zeroing freshly allocated huge pages on first write was
// erratic (0.1-2 s of kernel time per GiB, depending on whether the host had
// backed those frames), against a steady cost for 4 KiB pages.
//
// Only the 2 MiB-aligned interior of the buffer is advised (THP needs whole,
// aligned huge pages; the edges stay 4 KiB). The advice is a hint: where the
// kernel has THP off ("never") nothing is advised, and the result says so.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "addon.h"
#include "page_args.h"

namespace sevtrack {

namespace {

constexpr uintptr_t kHugePage = 2u << 20;

// The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled.
std::string ThpMode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(f, line)) return "unavailable";
  auto open = line.find('[');
  auto close = line.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return "unavailable";
  return line.substr(open + 1, close - open - 1);
}

// adviseHugePages(memory: Uint8Array) -> { advisedBytes, mode }
Napi::Value AdviseHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, 0, "memory");
  uint8_t* data = memory.Data();
  size_t len = memory.ByteLength();
  auto begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  auto end = (reinterpret_cast<uintptr_t>(data) + len) & ~(kHugePage - 1);
  size_t advised = 0;
  std::string mode = ThpMode();
  if (end > begin && (mode == "always" || mode == "madvise")) {
    if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) != 0) {
      throw Napi::Error::New(env, std::string("madvise(MADV_HUGEPAGE) on guest memory failed: ") +
                                      std::strerror(errno));
    }
    advised = end - begin;
  }
  auto out = Napi::Object::New(env);
  out.Set("advisedBytes", Napi::Number::New(env, static_cast<double>(advised)));
  out.Set("mode", Napi::String::New(env, mode));
  return out;
}

// prefaultMemory(memory: Uint8Array) -> { populatedBytes, error }
// Maps every page that holds a byte of memory writable (MADV_POPULATE_WRITE,
// Linux 5.14) without changing any content (rounded outward: the pages at
// either end, shared with whatever lies beside the buffer, are mapped
// already). A destination started for a guest of known size takes its one
// fault per page here, at start, as a VMM that preallocates guest RAM does,
// instead of on the receive path. A kernel
// without it answers EINVAL: nothing is populated and `error` says why.
Napi::Value PrefaultMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, 0, "memory");
  auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  auto begin = reinterpret_cast<uintptr_t>(memory.Data()) & ~(page - 1);
  auto end = (reinterpret_cast<uintptr_t>(memory.Data()) + memory.ByteLength() + page - 1) & ~(page - 1);
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
  std::string error;
  size_t populated = 0;
  if (end > begin) {
    if (madvise(reinterpret_cast<void*>(begin), end - begin, kPopulateWrite) == 0) {
      populated = end - begin;
    } else {
      error = std::string("madvise(MADV_POPULATE_WRITE): ") + std::strerror(errno);
    }
  }
  auto out = Napi::Object::New(env);
  out.Set("populatedBytes", Napi::Number::New(env, static_cast<double>(populated)));
  out.Set("error", error.empty() ? env.Null() : Napi::String::New(env, error));
  return out;
}

}  // namespace

void InitMemoryAdvice(Napi::Env env, Napi::Object exports) {
  exports.Set("adviseHugePages", Napi::Function::New(env, AdviseHugePages));
  exports.Set("prefaultMemory", Napi::Function::New(env, PrefaultMemory));
}

}  // namespace sevtrack
