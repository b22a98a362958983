// The limit of a migration's per-page work on this machine: the same steps
// the engine runs (page_pipeline.h) in a tight native loop on `threads` native
// threads, over buffers allocated and faulted in before the clock starts. The
// benchmarks divide the engine's measured throughput by this, measured in the
// same run on the same cores.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "addon.h"
#include "page_args.h"
#include "page_pipeline.h"
#include "resident_memory.h"

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

// The fixed keys of the limit's loops (their values do not change the work).
struct Keys {
  uint8_t xts_src[32], xts_dst[32], gcm[32], mac[16];
  Keys() {
    for (int i = 0; i < 32; ++i) {
      xts_src[i] = static_cast<uint8_t>(i + 1);
      xts_dst[i] = static_cast<uint8_t>(3 * i + 7);
      gcm[i] = static_cast<uint8_t>(5 * i + 11);
    }
    for (int i = 0; i < 16; ++i) mac[i] = static_cast<uint8_t>(7 * i + 13);
  }
};

size_t SlotBytes(bool encrypted) { return encrypted ? kSealed : kPage; }

// One side's per-page work. Source: encrypted, XTS decrypt + GCM seal into
// the frame slot and a digest of the plaintext; shared, a copy into the slot
// and a digest of the page. Destination: GCM open + XTS encrypt into its
// memory (or a copy out of the slot), and the digest of the plaintext.
class PageStep {
 public:
  PageStep(bool encrypted, Hash hash, const Keys& k)
      : encrypted_(encrypted), sealer_(k.xts_src, k.gcm), opener_(k.gcm, k.xts_dst), digest_(hash, k.mac) {
    std::memset(plain_, 0, sizeof plain_);
  }
  void Source(uint64_t gpa, uint64_t seq, const uint8_t* page, uint8_t* slot, uint8_t* digest) {
    if (encrypted_) {
      sealer_.Page(gpa, seq, page, plain_, slot);
    } else {
      std::memcpy(slot, page, kPage);
    }
    digest_.Page(gpa, encrypted_ ? plain_ : page, digest);
  }
  void Destination(uint64_t gpa, uint64_t seq, const uint8_t* slot, uint8_t* page, uint8_t* digest) {
    if (!encrypted_) {
      std::memcpy(page, slot, kPage);
    } else if (!opener_.Page(gpa, seq, slot, plain_, page)) {
      throw StepError{"limit self-check"};
    }
    digest_.Page(gpa, encrypted_ ? plain_ : page, digest);
  }

 private:
  bool encrypted_;
  Sealer sealer_;
  Opener opener_;
  Digest digest_;
  alignas(64) uint8_t plain_[kPage];
};

using Clock = std::chrono::steady_clock;

void SpinUntil(Clock::time_point t) {
  while (Clock::now() < t) {
  }
}

// One side-by-side source and destination over `npages` pages, `passes`
// times, on one thread: each batch is filled, then emptied, by this thread.
void Worker(bool encrypted, Hash hash, size_t npages, int passes, ResidentBuffer* src, ResidentBuffer* dst,
            const Clock::time_point* start, Clock::time_point* end) {
  Keys keys;
  PageStep step(encrypted, hash, keys);
  const size_t slot = SlotBytes(encrypted);
  std::vector<uint8_t> frame(kBatch * slot, 1), digests(2 * kBatch * kSha256, 1);
  SpinUntil(*start);
  uint64_t seq = 0;
  for (int p = 0; p < passes; ++p) {
    for (size_t first = 0; first < npages; first += kBatch) {
      size_t n = std::min(kBatch, npages - first);
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        step.Source(gpa, seq + i, src->data() + gpa, frame.data() + i * slot, digests.data() + i * kSha256);
      }
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        step.Destination(gpa, seq + i, frame.data() + i * slot, dst->data() + gpa,
                         digests.data() + (kBatch + i) * kSha256);
      }
      seq += n;
    }
  }
  *end = Clock::now();
}

// A resident buffer of `bytes` filled with `fill`; an allocation the machine
// refuses is a JS Error naming `what`, not an exception escaping the addon
// (std::terminate).
std::unique_ptr<ResidentBuffer> Resident(Napi::Env env, const char* what, size_t bytes, uint8_t fill) {
  try {
    return std::make_unique<ResidentBuffer>(bytes, fill);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string(what) + ": cannot allocate a buffer of " + std::to_string(bytes) +
                                    " bytes: " + e.what());
  }
}

// A bounded ring of frames between a source thread and a destination
// thread, as a migration's channel is: frame f is built in slot f % slots,
// the source runs at most `slots` frames ahead, and a side with nothing to do
// spins briefly, then sleeps until the other wakes it.
class FrameRing {
 public:
  FrameRing(size_t slots, size_t frame_bytes) : slots_(slots), frame_bytes_(frame_bytes), buf_(slots * frame_bytes, 1) {}
  uint8_t* Slot(uint64_t f) { return buf_.data() + (f % slots_) * frame_bytes_; }
  // Each wait returns false when the other side failed: the frame is not
  // ready and must not be touched.
  bool WaitFree(uint64_t f) {
    return Wait([&] { return f - consumed_.load(std::memory_order_acquire) < slots_; });
  }
  void Publish(uint64_t f) { Advance(&published_, f + 1); }
  bool WaitPublished(uint64_t f) {
    return Wait([&] { return published_.load(std::memory_order_acquire) > f; });
  }
  void Consume(uint64_t f) { Advance(&consumed_, f + 1); }
  // A side failed: the other stops waiting (and sees failed()).
  void Fail() {
    failed_.store(true);
    Wake();
  }
  bool failed() const { return failed_.load(); }

 private:
  static constexpr int kSpins = 4000;
  template <class Ready>
  bool Wait(Ready ready) {
    auto done = [&] { return ready() || failed_.load(); };
    bool now = false;
    for (int i = 0; i < kSpins && !now; ++i) now = done();
    if (!now) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, done);
    }
    return !failed_.load();
  }
  void Advance(std::atomic<uint64_t>* counter, uint64_t value) {
    counter->store(value, std::memory_order_release);
    Wake();
  }
  void Wake() {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  size_t slots_, frame_bytes_;
  std::vector<uint8_t> buf_;
  std::atomic<uint64_t> published_{0}, consumed_{0};
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

// pipelineHandoff(encrypted, hash, pages, passes, slots): pages/s of the
// limit's per-page work split as a migration splits it: a source thread fills
// frames of 256 pages from its memory into a ring of `slots` frames, a
// destination thread empties them into its own memory. What a two-thread
// engine could reach with no cost of its own around each frame.
Napi::Value PipelineHandoff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool encrypted = info[0].ToBoolean();
  std::string h = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (h != "sha256" && h != "mac" && h != "none") {
    throw Napi::TypeError::New(env, "hash must be 'sha256', 'mac' or 'none'");
  }
  Hash hash = h == "sha256" ? Hash::kSha256 : h == "mac" ? Hash::kMac : Hash::kNone;
  uint64_t npages = GetIndex(info, 2, "pages");
  uint64_t passes = GetIndex(info, 3, "passes");
  uint64_t slots = GetIndex(info, 4, "slots");
  if (npages < 1 || npages > (1u << 20) || passes < 1 || passes > 1000 || slots < 1 || slots > 64) {
    throw Napi::RangeError::New(env, "pages must be in [1, 2^20], passes in [1, 1000], slots in [1, 64]");
  }
  auto src = Resident(env, "pipelineHandoff", npages * kPage, 0x5a);
  auto dst = Resident(env, "pipelineHandoff", npages * kPage, 1);
  const size_t slot = SlotBytes(encrypted);
  FrameRing ring(slots, kBatch * slot);
  const Keys keys;
  const size_t per_pass = (npages + kBatch - 1) / kBatch;
  const uint64_t frames = per_pass * passes;
  const auto start = Clock::now() + std::chrono::milliseconds(20);
  Clock::time_point end;
  std::string errors[2];
  // One side on its own thread: its state built and every frame run inside
  // the guard, so a failure (an OpenSSL step, an allocation) is recorded and
  // stops both sides instead of escaping the thread (std::terminate).
  auto guarded = [&](int which, auto side) {
    return [&, which, side] {
      try {
        side();
      } catch (const StepError& e) {
        errors[which] = std::string("OpenSSL ") + e.what + " failed";
        ring.Fail();
      } catch (const std::exception& e) {
        errors[which] = e.what();
        ring.Fail();
      }
    };
  };
  auto frames_of = [&](auto&& frame_work) {
    SpinUntil(start);
    for (uint64_t f = 0; f < frames && !ring.failed(); ++f) {
      size_t first = (f % per_pass) * kBatch;
      frame_work(f, first, std::min<size_t>(kBatch, npages - first));
    }
  };
  auto source_side = [&] {
    PageStep source(encrypted, hash, keys);
    std::vector<uint8_t> digests(kBatch * kSha256, 1);
    frames_of([&](uint64_t f, size_t first, size_t n) {
      if (!ring.WaitFree(f)) return;
      uint8_t* frame = ring.Slot(f);
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        source.Source(gpa, f * kBatch + i, src->data() + gpa, frame + i * slot, digests.data() + i * kSha256);
      }
      ring.Publish(f);
    });
  };
  auto destination_side = [&] {
    PageStep destination(encrypted, hash, keys);
    std::vector<uint8_t> digests(kBatch * kSha256, 1);
    frames_of([&](uint64_t f, size_t first, size_t n) {
      if (!ring.WaitPublished(f)) return;
      const uint8_t* frame = ring.Slot(f);
      for (size_t i = 0; i < n; ++i) {
        uint64_t gpa = (first + i) * kPage;
        destination.Destination(gpa, f * kBatch + i, frame + i * slot, dst->data() + gpa, digests.data() + i * kSha256);
      }
      ring.Consume(f);
    });
    end = Clock::now();
  };
  std::thread source_thread(guarded(0, source_side));
  std::thread destination_thread;
  try {
    destination_thread = std::thread(guarded(1, destination_side));
  } catch (const std::system_error& e) {
    ring.Fail();
    source_thread.join();
    throw Napi::Error::New(env, std::string("pipelineHandoff: cannot start a thread: ") + e.what());
  }
  source_thread.join();
  destination_thread.join();
  for (auto& e : errors) {
    if (!e.empty()) throw Napi::Error::New(env, e);
  }
  double seconds = std::chrono::duration<double>(end - start).count();
  return Napi::Number::New(env, static_cast<double>(npages * passes) / seconds);
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
  std::vector<std::unique_ptr<ResidentBuffer>> src, dst;
  for (uint64_t t = 0; t < threads; ++t) {
    src.push_back(Resident(env, "pipelineLimit", npages * kPage, static_cast<uint8_t>(0x5a + t)));
    dst.push_back(Resident(env, "pipelineLimit", npages * kPage, 1));
  }
  auto start = Clock::now() + std::chrono::milliseconds(20);
  std::vector<Clock::time_point> ends(threads);
  std::vector<std::thread> pool;
  std::vector<std::string> errors(threads);
  for (uint64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        Worker(encrypted, hash, npages, static_cast<int>(passes), src[t].get(), dst[t].get(), &start, &ends[t]);
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
  exports.Set("pipelineHandoff", Napi::Function::New(env, PipelineHandoff, "pipelineHandoff"));
}

}  // namespace sevtrack
