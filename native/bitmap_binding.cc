// N-API surface of the bitmap kernels. One call per bitmap operation: the
// per-word loops stay on the native side.
#include <string>
#include <vector>

#include "addon.h"
#include "bitmap.h"
#include "page_args.h"

namespace sevtrack {
namespace {

// Reads (gfn, npages) at argument 1 and 2 and checks the range lies inside
// the bitmap.
void GetRange(const Napi::CallbackInfo& info, const WordsArg& bm, uint64_t* gfn, uint64_t* npages) {
  *gfn = GetIndex(info, 1, "gfn");
  *npages = GetIndex(info, 2, "npages");
  uint64_t nbits = static_cast<uint64_t>(bm.nwords) * 64;
  if (*gfn > nbits || *npages > nbits - *gfn) {
    throw Napi::RangeError::New(info.Env(), "range (gfn " + std::to_string(*gfn) + ", npages " +
                                                std::to_string(*npages) + ") exceeds the bitmap's " +
                                                std::to_string(nbits) + " bits");
  }
}

// The four range writers share one argument check: (bitmap, gfn, npages).
template <void (*Op)(uint64_t*, uint64_t, uint64_t)>
Napi::Value RangeWriter(const Napi::CallbackInfo& info) {
  WordsArg bm = GetWords(info, 0, "bitmap");
  uint64_t gfn, npages;
  GetRange(info, bm, &gfn, &npages);
  Op(bm.words, gfn, npages);
  return info.Env().Undefined();
}

Napi::Value CountRange(const Napi::CallbackInfo& info) {
  WordsArg bm = GetWords(info, 0, "bitmap");
  uint64_t gfn, npages;
  GetRange(info, bm, &gfn, &npages);
  return Napi::Number::New(info.Env(), static_cast<double>(BitmapCountRange(bm.words, gfn, npages)));
}

Napi::Value ToRuns(const Napi::CallbackInfo& info) {
  WordsArg bm = GetWords(info, 0, "bitmap");
  uint64_t nbits = GetIndex(info, 1, "nbits");
  if (nbits > static_cast<uint64_t>(bm.nwords) * 64) {
    throw Napi::RangeError::New(info.Env(), "nbits " + std::to_string(nbits) + " exceeds the bitmap's " +
                                                std::to_string(bm.nwords * 64) + " bits");
  }
  std::vector<uint64_t> runs;
  BitmapToRuns(bm.words, nbits, &runs);
  auto out = Napi::Float64Array::New(info.Env(), runs.size());
  for (size_t i = 0; i < runs.size(); ++i) out[i] = static_cast<double>(runs[i]);
  return out;
}

// bitmapSetRuns(bitmap, runs, nbits): sets every run of runs = [gfn0, npages0,
// gfn1, npages1, ...] (bitmapToRuns' output form), in one call: building a
// bitmap of tens of thousands of ranges one bitmapSetRange call each costs
// milliseconds of call overhead in code that runs once. Every run is checked
// against the first nbits bits (the guest's pages) before any bit is written.
Napi::Value SetRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WordsArg bm = GetWords(info, 0, "bitmap");
  auto runs = GetFloat64s(info, 1, "runs");
  uint64_t nbits = GetIndex(info, 2, "nbits");
  if (nbits > static_cast<uint64_t>(bm.nwords) * 64) {
    throw Napi::RangeError::New(env, "nbits " + std::to_string(nbits) + " exceeds the bitmap's " +
                                         std::to_string(bm.nwords * 64) + " bits");
  }
  size_t n = runs.ElementLength();
  if (n % 2 != 0) {
    throw Napi::RangeError::New(env, "runs must hold (gfn, npages) pairs; got " + std::to_string(n) + " numbers");
  }
  std::vector<uint64_t> checked(n);
  for (size_t i = 0; i < n; i += 2) {
    checked[i] = IndexAt(env, runs, i, nbits + 1, "runs (gfn)");
    checked[i + 1] = IndexAt(env, runs, i + 1, nbits + 1, "runs (npages)");
    if (checked[i + 1] > nbits - checked[i]) {
      throw Napi::RangeError::New(env, "run (gfn " + std::to_string(checked[i]) + ", npages " +
                                           std::to_string(checked[i + 1]) + ") exceeds the bitmap's " +
                                           std::to_string(nbits) + " pages");
    }
  }
  for (size_t i = 0; i < n; i += 2) BitmapSetRange(bm.words, checked[i], checked[i + 1]);
  return env.Undefined();
}

Napi::Value Combine(const Napi::CallbackInfo& info, BitmapOp op) {
  WordsArg dst = GetWords(info, 0, "dst");
  WordsArg a = GetWords(info, 1, "a");
  WordsArg b = GetWords(info, 2, "b");
  if (a.nwords != dst.nwords || b.nwords != dst.nwords) {
    throw Napi::RangeError::New(info.Env(), "dst, a and b must have the same length (got " +
                                                std::to_string(dst.nwords * 2) + ", " +
                                                std::to_string(a.nwords * 2) + ", " +
                                                std::to_string(b.nwords * 2) + " words)");
  }
  BitmapCombine(dst.words, a.words, b.words, dst.nwords, op);
  return info.Env().Undefined();
}

Napi::Value Harvest(const Napi::CallbackInfo& info) {
  WordsArg shared = GetWords(info, 0, "shared");
  WordsArg out = GetWords(info, 1, "out");
  if (shared.nwords != out.nwords) {
    throw Napi::RangeError::New(info.Env(), "shared and out must have the same length");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(BitmapHarvest(shared.words, out.words, shared.nwords)));
}

}  // namespace

void InitBitmap(Napi::Env env, Napi::Object exports) {
  exports.Set("bitmapSetRange", Napi::Function::New(env, RangeWriter<BitmapSetRange>, "bitmapSetRange"));
  exports.Set("bitmapClearRange", Napi::Function::New(env, RangeWriter<BitmapClearRange>, "bitmapClearRange"));
  exports.Set("bitmapSetRangeAtomic", Napi::Function::New(env, RangeWriter<BitmapSetRangeAtomic>, "bitmapSetRangeAtomic"));
  exports.Set("bitmapClearRangeAtomic", Napi::Function::New(env, RangeWriter<BitmapClearRangeAtomic>, "bitmapClearRangeAtomic"));
  exports.Set("bitmapSetRuns", Napi::Function::New(env, SetRuns, "bitmapSetRuns"));
  exports.Set("bitmapCountRange", Napi::Function::New(env, CountRange, "bitmapCountRange"));
  exports.Set("bitmapToRuns", Napi::Function::New(env, ToRuns, "bitmapToRuns"));
  exports.Set("bitmapOr", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Combine(i, BitmapOp::kOr); }, "bitmapOr"));
  exports.Set("bitmapAndNot", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Combine(i, BitmapOp::kAndNot); }, "bitmapAndNot"));
  exports.Set("bitmapXor", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return Combine(i, BitmapOp::kXor); }, "bitmapXor"));
  exports.Set("bitmapHarvest", Napi::Function::New(env, Harvest, "bitmapHarvest"));
}

}  // namespace sevtrack
