#include "page_args.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace sevtrack {

Napi::Uint8Array GetBytes(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsTypedArray() ||
      info[index].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Uint8Array");
  }
  return info[index].As<Napi::Uint8Array>();
}

Napi::Float64Array GetFloat64s(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsTypedArray() ||
      info[index].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Float64Array");
  }
  return info[index].As<Napi::Float64Array>();
}

size_t CheckedBytes(Napi::Env env, uint64_t count, size_t unit, const char* what) {
  if (unit != 0 && count > std::numeric_limits<size_t>::max() / unit) {
    throw Napi::RangeError::New(env, std::string(what) + " " + std::to_string(count) + " * " +
                                         std::to_string(unit) + " bytes overflows: pass a batch that fits in memory");
  }
  return static_cast<size_t>(count * unit);
}

uint64_t IndexAt(Napi::Env env, const Napi::Float64Array& a, size_t i, uint64_t limit, const char* name) {
  double v = a[i];
  // limit <= 2^53 keeps the comparison exact; the cast happens only after it.
  if (!(v >= 0) || std::floor(v) != v || v >= static_cast<double>(limit)) {
    throw Napi::RangeError::New(env, std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                                         " is not an integer in [0, " + std::to_string(limit) + ")");
  }
  return static_cast<uint64_t>(v);
}

void OpenSslFail(Napi::Env env, const char* what) {
  throw Napi::Error::New(env, std::string("OpenSSL ") + what + " failed");
}

void Le64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

CipherCtx XtsContext(Napi::Env env, const uint8_t* key32, bool encrypt) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_CipherInit_ex(ctx.get(), EVP_aes_128_xts(), nullptr, key32, nullptr, encrypt ? 1 : 0) != 1) {
    OpenSslFail(env, "AES-128-XTS init (the two key halves must differ)");
  }
  return ctx;
}

void XtsPage(Napi::Env env, EVP_CIPHER_CTX* ctx, uint64_t gpa, const uint8_t* in, uint8_t* out) {
  uint8_t tweak[16] = {0};
  Le64(tweak, gpa);
  int outl = 0;
  if (EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, tweak, -1) != 1 ||
      EVP_CipherUpdate(ctx, out, &outl, in, static_cast<int>(kPage)) != 1) {
    OpenSslFail(env, "AES-128-XTS update");
  }
}

}  // namespace sevtrack
