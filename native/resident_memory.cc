#include "resident_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>

namespace sevtrack {

namespace {
constexpr uintptr_t kHugePage = kHugePageBytes;
}

std::string ThpMode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(f, line)) return "unavailable";
  auto open = line.find('[');
  auto close = line.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return "unavailable";
  return line.substr(open + 1, close - open - 1);
}

size_t AdviseHugeInterior(uint8_t* data, size_t len, const std::string& mode) {
  auto begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  auto end = (reinterpret_cast<uintptr_t>(data) + len) & ~(kHugePage - 1);
  if (end <= begin || (mode != "always" && mode != "madvise")) return 0;
  if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) != 0) {
    throw std::runtime_error(std::string("madvise(MADV_HUGEPAGE) failed: ") + std::strerror(errno));
  }
  return end - begin;
}

void TouchPages(uintptr_t begin, uintptr_t end, uintptr_t page) {
  for (uintptr_t a = begin; a < end; a += page) {
    __atomic_fetch_add(reinterpret_cast<uint32_t*>(a), 0u, __ATOMIC_RELAXED);
  }
}

ResidentBuffer::ResidentBuffer(size_t bytes, uint8_t fill) : bytes_(bytes) {
  // One huge page more than asked, so the data can start on a 2 MiB boundary.
  map_bytes_ = bytes + kHugePage;
  map_ = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map_ == MAP_FAILED) throw std::bad_alloc();
  data_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(map_) + kHugePage - 1) & ~(kHugePage - 1));
  try {
    AdviseHugeInterior(data_, bytes_, ThpMode());
  } catch (...) {
    munmap(map_, map_bytes_);
    throw;
  }
  std::memset(data_, fill, bytes_);
}

ResidentBuffer::~ResidentBuffer() { munmap(map_, map_bytes_); }

}  // namespace sevtrack
