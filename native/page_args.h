// Argument checks shared by the page-crypto bindings: every length and index
// that reaches pointer arithmetic is range-checked first, so a crafted batch
// length or gfn from JS throws a RangeError instead of wrapping a size check
// or converting an out-of-range double (undefined behaviour) to uint64.
#pragma once
#include <napi.h>
#include <openssl/evp.h>

#include <cstdint>
#include <memory>

namespace sevtrack {

constexpr size_t kPage = 4096;
constexpr size_t kTag = 16;
constexpr size_t kSealed = kPage + kTag;

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

// A Uint8Array argument, or a TypeError naming it.
Napi::Uint8Array GetBytes(const Napi::CallbackInfo& info, size_t index, const char* name);
// A Float64Array argument, or a TypeError naming it.
Napi::Float64Array GetFloat64s(const Napi::CallbackInfo& info, size_t index, const char* name);

// count * unit, or a RangeError naming `what` when the product overflows
// size_t (a crafted count must never wrap past a buffer-size check).
size_t CheckedBytes(Napi::Env env, uint64_t count, size_t unit, const char* what);

// Element i of a Float64Array as an integer index below `limit`: NaN,
// negative, fractional and out-of-range values throw a RangeError naming the
// array, the element and the limit (never a double-to-uint64 cast of them).
uint64_t IndexAt(Napi::Env env, const Napi::Float64Array& a, size_t i, uint64_t limit, const char* name);

// Throws "OpenSSL <what> failed".
[[noreturn]] void OpenSslFail(Napi::Env env, const char* what);

// v as 8 little-endian bytes.
void Le64(uint8_t* out, uint64_t v);

// One AES-128-XTS context for a batch (the two key halves must differ).
CipherCtx XtsContext(Napi::Env env, const uint8_t* key32, bool encrypt);

// XTS of one 4 KiB page with tweak = gpa (16 bytes little-endian).
void XtsPage(Napi::Env env, EVP_CIPHER_CTX* ctx, uint64_t gpa, const uint8_t* in, uint8_t* out);

constexpr uint64_t kMaxSafeInteger = 9007199254740991ull;  // 2^53 - 1

}  // namespace sevtrack
