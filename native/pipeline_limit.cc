// The limit of a migration's per-page work on this machine: the same steps
// the engine runs (page_pipeline.h) in a tight native loop on `threads` native
// threads, over buffers allocated and faulted in before the clock starts. The
// benchmarks divide the engine's measured throughput by this, measured in the
// same run on the same cores.
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "addon.h"
#include "page_args.h"
#include "page_pipeline.h"

namespace sevtrack {
namespace {

constexpr size_t kBatch = 256;

enum class Hash { kNone, kSha256, kMac };

struct Digest {
  Hash kind;
  PageSha256 sha;
  ViewMac mac;
  explicit Digest(Hash k, const uint8_t* mac_key) : kind(k), mac(mac_key) {}
  void Page(uint64_t gpa, const uint8_t* page, uint8_t* out) {
    if (kind == Hash::kSha256) sha.Page(page, out);
    if (kind == Hash::kMac) mac.Page(gpa, page, out);
  }
};

// One side-by-side source and destination over `npages` pages, `passes` times.
// Encrypted: XTS decrypt + GCM seal into a frame, digest of the plaintext;
// GCM open + XTS encrypt into destination memory, digest of the plaintext.
// Shared: copy into a frame, digest; copy out of it, digest.
void Worker(bool encrypted, Hash hash, size_t npages, int passes, std::vector<uint8_t>* src, std::vector<uint8_t>* dst,
            const std::chrono::steady_clock::time_point* start, std::chrono::steady_clock::time_point* end) {
  uint8_t xts_src[32], xts_dst[32], gcm[32], mac_key[16];
  for (int i = 0; i < 32; ++i) {
    xts_src[i] = static_cast<uint8_t>(i + 1);
    xts_dst[i] = static_cast<uint8_t>(3 * i + 7);
    gcm[i] = static_cast<uint8_t>(5 * i + 11);
  }
  for (int i = 0; i < 16; ++i) mac_key[i] = static_cast<uint8_t>(7 * i + 13);
  Sealer sealer(xts_src, gcm);
  Opener opener(gcm, xts_dst);
  Digest src_digest(hash, mac_key), dst_digest(hash, mac_key);
  std::vector<uint8_t> frame(kBatch * kSealed, 1), digests(2 * kBatch * kSha256, 1);
  alignas(64) uint8_t plain[kPage];
  std::memset(plain, 0, sizeof plain);
  while (std::chrono::steady_clock::now() < *start) {
  }
  uint64_t seq = 0;
  for (int p = 0; p < passes; ++p) {
    for (size_t first = 0; first < npages; first += kBatch) {
      size_t n = std::min(kBatch, npages - first);
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        const uint8_t* page = src->data() + gpa;
        if (encrypted) {
          sealer.Page(gpa, seq + i, page, plain, frame.data() + i * kSealed);
          src_digest.Page(gpa, plain, digests.data() + i * kSha256);
        } else {
          std::memcpy(frame.data() + i * kPage, page, kPage);
          src_digest.Page(gpa, page, digests.data() + i * kSha256);
        }
      }
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        uint8_t* page = dst->data() + gpa;
        if (encrypted) {
          if (!opener.Page(gpa, seq + i, frame.data() + i * kSealed, plain, page)) throw StepError{"limit self-check"};
          dst_digest.Page(gpa, plain, digests.data() + (kBatch + i) * kSha256);
        } else {
          std::memcpy(page, frame.data() + i * kPage, kPage);
          dst_digest.Page(gpa, page, digests.data() + (kBatch + i) * kSha256);
        }
      }
      seq += n;
    }
  }
  *end = std::chrono::steady_clock::now();
}

// pipelineLimit(encrypted, hash, pagesPerThread, passes, threads): pages/s of
// all threads together (pages done / wall time from a common start).
Napi::Value PipelineLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool encrypted = info[0].ToBoolean();
  std::string h = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  Hash hash = h == "sha256" ? Hash::kSha256 : h == "mac" ? Hash::kMac : Hash::kNone;
  if (h != "sha256" && h != "mac" && h != "none") {
    throw Napi::TypeError::New(env, "hash must be 'sha256', 'mac' or 'none'");
  }
  uint64_t npages = GetIndex(info, 2, "pagesPerThread");
  uint64_t passes = GetIndex(info, 3, "passes");
  uint64_t threads = GetIndex(info, 4, "threads");
  if (npages < 1 || npages > (1u << 20) || passes < 1 || passes > 1000 || threads < 1 || threads > 64) {
    throw Napi::RangeError::New(env, "pagesPerThread must be in [1, 2^20], passes in [1, 1000], threads in [1, 64]");
  }
  // Allocated and faulted in (non-zero fill) before the clock starts.
  std::vector<std::vector<uint8_t>> src(threads), dst(threads);
  for (uint64_t t = 0; t < threads; ++t) {
    src[t].assign(npages * kPage, static_cast<uint8_t>(0x5a + t));
    dst[t].assign(npages * kPage, 1);
  }
  auto start = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
  std::vector<std::chrono::steady_clock::time_point> ends(threads);
  std::vector<std::thread> pool;
  std::vector<std::string> errors(threads);
  for (uint64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        Worker(encrypted, hash, npages, static_cast<int>(passes), &src[t], &dst[t], &start, &ends[t]);
      } catch (const StepError& e) {
        errors[t] = e.what;
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors) {
    if (!e.empty()) throw Napi::Error::New(env, "OpenSSL " + e + " failed");
  }
  auto last = start;
  for (auto& e : ends) last = std::max(last, e);
  double seconds = std::chrono::duration<double>(last - start).count();
  return Napi::Number::New(env, static_cast<double>(npages * passes * threads) / seconds);
}

}  // namespace

void InitPipelineLimit(Napi::Env env, Napi::Object exports) {
  exports.Set("pipelineLimit", Napi::Function::New(env, PipelineLimit, "pipelineLimit"));
}

}  // namespace sevtrack
