#include "bitmap.h"

namespace sevtrack {
namespace {

constexpr uint64_t kAll = ~uint64_t{0};

// Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64.
inline uint64_t WordMask(unsigned lo, unsigned hi) {
  uint64_t upper = hi == 64 ? kAll : ((uint64_t{1} << hi) - 1);
  return upper & ~((uint64_t{1} << lo) - 1);
}

// Calls fn(word_index, mask) for every word the range [gfn, gfn+npages)
// touches, with the mask of the bits inside the range.
template <typename Fn>
inline void ForEachWord(uint64_t gfn, uint64_t npages, Fn fn) {
  if (npages == 0) return;
  uint64_t end = gfn + npages;
  uint64_t first = gfn / 64, last = (end - 1) / 64;
  if (first == last) {
    fn(first, WordMask(gfn % 64, (end - 1) % 64 + 1));
    return;
  }
  fn(first, WordMask(gfn % 64, 64));
  for (uint64_t w = first + 1; w < last; ++w) fn(w, kAll);
  fn(last, WordMask(0, (end - 1) % 64 + 1));
}

}  // namespace

void BitmapSetRange(uint64_t* words, uint64_t gfn, uint64_t npages) {
  ForEachWord(gfn, npages, [words](uint64_t w, uint64_t m) { words[w] |= m; });
}

void BitmapClearRange(uint64_t* words, uint64_t gfn, uint64_t npages) {
  ForEachWord(gfn, npages, [words](uint64_t w, uint64_t m) { words[w] &= ~m; });
}

void BitmapSetRangeAtomic(uint64_t* words, uint64_t gfn, uint64_t npages) {
  ForEachWord(gfn, npages, [words](uint64_t w, uint64_t m) { __atomic_fetch_or(&words[w], m, __ATOMIC_SEQ_CST); });
}

void BitmapClearRangeAtomic(uint64_t* words, uint64_t gfn, uint64_t npages) {
  ForEachWord(gfn, npages, [words](uint64_t w, uint64_t m) { __atomic_fetch_and(&words[w], ~m, __ATOMIC_SEQ_CST); });
}

uint64_t BitmapCountRange(const uint64_t* words, uint64_t gfn, uint64_t npages) {
  uint64_t count = 0;
  ForEachWord(gfn, npages, [&](uint64_t w, uint64_t m) {
    count += static_cast<uint64_t>(__builtin_popcountll(words[w] & m));
  });
  return count;
}

void BitmapToRuns(const uint64_t* words, uint64_t nbits, std::vector<uint64_t>* runs) {
  uint64_t nwords = (nbits + 63) / 64;
  bool in_run = false;
  uint64_t run_start = 0;
  for (uint64_t w = 0; w < nwords; ++w) {
    uint64_t word = words[w];
    if (w == nwords - 1 && nbits % 64 != 0) word &= WordMask(0, nbits % 64);
    // Fast paths: a word that continues the current state entirely.
    if (!in_run && word == 0) continue;
    if (in_run && word == kAll) continue;
    uint64_t base = w * 64;
    unsigned pos = 0;
    while (pos < 64) {
      if (!in_run) {
        uint64_t rest = word >> pos;
        if (rest == 0) break;
        pos += static_cast<unsigned>(__builtin_ctzll(rest));
        in_run = true;
        run_start = base + pos;
      } else {
        uint64_t rest = ~word >> pos;
        if (rest == 0) break;
        pos += static_cast<unsigned>(__builtin_ctzll(rest));
        in_run = false;
        runs->push_back(run_start);
        runs->push_back(base + pos - run_start);
      }
    }
  }
  if (in_run) {
    runs->push_back(run_start);
    runs->push_back(nbits - run_start);
  }
}

void BitmapCombine(uint64_t* dst, const uint64_t* a, const uint64_t* b, size_t nwords, BitmapOp op) {
  switch (op) {
    case BitmapOp::kOr:
      for (size_t i = 0; i < nwords; ++i) dst[i] = a[i] | b[i];
      break;
    case BitmapOp::kAndNot:
      for (size_t i = 0; i < nwords; ++i) dst[i] = a[i] & ~b[i];
      break;
    case BitmapOp::kXor:
      for (size_t i = 0; i < nwords; ++i) dst[i] = a[i] ^ b[i];
      break;
  }
}

uint64_t BitmapHarvest(uint64_t* shared, uint64_t* out, size_t nwords) {
  uint64_t harvested = 0;
  for (size_t i = 0; i < nwords; ++i) {
    // A relaxed load skips clean words without a locked instruction; a bit
    // set after this load is simply left for the next harvest.
    if (__atomic_load_n(&shared[i], __ATOMIC_RELAXED) == 0) continue;
    uint64_t bits = __atomic_exchange_n(&shared[i], uint64_t{0}, __ATOMIC_ACQ_REL);
    out[i] |= bits;
    harvested += static_cast<uint64_t>(__builtin_popcountll(bits));
  }
  return harvested;
}

}  // namespace sevtrack
