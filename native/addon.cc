#include "addon.h"

#include <cmath>

namespace sevtrack {

WordsArg GetWords(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= index || !info[index].IsTypedArray() ||
      info[index].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    throw Napi::TypeError::New(env, std::string(name) + " must be a Uint32Array bitmap");
  }
  auto arr = info[index].As<Napi::Uint32Array>();
  if (arr.ElementLength() % 2 != 0 || arr.ByteOffset() % 8 != 0) {
    throw Napi::RangeError::New(env, std::string(name) +
                                         " must cover whole 64-bit words (even length, 8-byte aligned "
                                         "offset): allocate bitmaps with PageBitmap");
  }
  return WordsArg{reinterpret_cast<uint64_t*>(arr.Data()), arr.ElementLength() / 2};
}

uint64_t GetIndex(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= index || !info[index].IsNumber()) {
    throw Napi::TypeError::New(env, std::string(name) + " must be a number");
  }
  double v = info[index].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > 9007199254740991.0 || std::floor(v) != v) {
    throw Napi::RangeError::New(env, std::string(name) + " must be a non-negative safe integer");
  }
  return static_cast<uint64_t>(v);
}

}  // namespace sevtrack

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  sevtrack::InitBitmap(env, exports);
  sevtrack::InitCrypto(env, exports);
  sevtrack::InitSysgenid(env, exports);
  sevtrack::InitPipeline(env, exports);
  sevtrack::InitPipelineLimit(env, exports);
  sevtrack::InitKvm(env, exports);
  sevtrack::InitLock(env, exports);
  sevtrack::InitMemoryAdvice(env, exports);
  return exports;
}

NODE_API_MODULE(sevtrack_native, Init)
