// Memory as a VMM holds guest RAM: resident before it is used, and on
// transparent huge pages where the kernel offers them. One module, so guest
// memory (memory_advice.cc) and the limit benchmark's buffers
// (pipeline_limit.cc) are the same kind of memory, and the engine is not
// divided by a limit measured over memory it does not use (on the machine
// of docs/benchmarks.md's fifth look, 4 KiB or huge made no difference to
// the limit beyond noise; a plain memcpy ran twice as fast into huge pages).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sevtrack {

// The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled
// ("always", "madvise", "never"), or "unavailable".
std::string ThpMode();

// Advises MADV_HUGEPAGE on the 2 MiB-aligned interior of [data, data + len)
// when `mode` (ThpMode(), read once by the caller) is "always" or "madvise";
// returns the bytes advised (0 otherwise). Throws std::runtime_error when
// madvise fails.
size_t AdviseHugeInterior(uint8_t* data, size_t len, const std::string& mode);

// The size of a transparent huge page on x86-64, the only size THP maps.
constexpr uintptr_t kHugePageBytes = 2u << 20;

// Writes every page of [begin, end) (page-aligned) once from user space with
// an atomic add of zero: the contents do not change, even under a concurrent
// writer. MADV_POPULATE_WRITE maps the pages in the kernel's tables, but
// under shadow paging (a guest kernel run by KVM-PVM, as on our development
// machines) the first user access still takes a fault in the host: measured,
// a 1 GiB memcpy into populated 4 KiB pages took 1.57 s, 0.21 s once each
// page had been touched.
void TouchPages(uintptr_t begin, uintptr_t end, uintptr_t page);

// An anonymous mapping of `bytes`, 2 MiB-aligned, advised huge where the
// kernel allows, every byte set to `fill` (which faults every page in).
class ResidentBuffer {
 public:
  ResidentBuffer(size_t bytes, uint8_t fill);
  ~ResidentBuffer();
  ResidentBuffer(const ResidentBuffer&) = delete;
  ResidentBuffer& operator=(const ResidentBuffer&) = delete;
  uint8_t* data() { return data_; }

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace sevtrack
