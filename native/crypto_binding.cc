// Batch page crypto on Node's own OpenSSL (exported to addons): the SEV
// memory model's AES-XTS (tweak = GPA) and the PSP model's AES-GCM sealing.
// One cipher context per call, many pages per call: node:crypto pays several
// microseconds per cipher object, which dominates at 4 KiB per page.
#include <openssl/evp.h>

#include <cstring>
#include <memory>
#include <string>

#include "addon.h"
#include "page_args.h"
#include "page_pipeline.h"
#include "step_guard.h"

namespace sevtrack {
namespace {

// xtsPages(key32, encrypt, src, dst, firstGpa, npages): each 4 KiB page is
// one XTS data unit with tweak = its GPA (16 bytes little-endian). src and
// dst hold npages pages and may be the same memory.
Napi::Value XtsPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto key = GetBytes(info, 0, "key");
  bool encrypt = info[1].ToBoolean();
  auto src = GetBytes(info, 2, "src");
  auto dst = GetBytes(info, 3, "dst");
  uint64_t gpa = GetIndex(info, 4, "firstGpa");
  uint64_t npages = GetIndex(info, 5, "npages");
  if (key.ByteLength() != 32) throw Napi::RangeError::New(env, "key must be 32 bytes (AES-128-XTS)");
  size_t bytes = CheckedBytes(env, npages, kPage, "npages");
  if (src.ByteLength() < bytes || dst.ByteLength() < bytes) {
    throw Napi::RangeError::New(env, "src and dst must hold npages * 4096 bytes");
  }
  // gpa + npages * 4096 stays below 2^64: both are below 2^53 and npages fits in memory.
  CipherCtx ctx = XtsContext(env, key.Data(), encrypt);
  for (uint64_t p = 0; p < npages; ++p) XtsPage(env, ctx.get(), gpa + p * kPage, src.Data() + p * kPage, dst.Data() + p * kPage);
  return env.Undefined();
}

// The arguments of gcmSealPages/gcmOpenPages: (key32, src, dst, gpas,
// firstSeq), with src and dst sized for gpas.length pages of their units.
struct GcmArgs {
  Napi::Uint8Array key, src, dst;
  Napi::Float64Array gpas;
  uint64_t seq;
  size_t n;
};

GcmArgs GetGcmArgs(const Napi::CallbackInfo& info, size_t src_unit, size_t dst_unit) {
  GcmArgs a{GetBytes(info, 0, "key"), GetBytes(info, 1, "src"), GetBytes(info, 2, "dst"), GetFloat64s(info, 3, "gpas"),
            GetIndex(info, 4, "firstSeq"), 0};
  a.n = a.gpas.ElementLength();
  if (a.key.ByteLength() != 32) throw Napi::RangeError::New(info.Env(), "key must be 32 bytes (AES-256-GCM)");
  if (a.src.ByteLength() < a.n * src_unit || a.dst.ByteLength() < a.n * dst_unit) {
    throw Napi::RangeError::New(info.Env(), "src must hold gpas.length * " + std::to_string(src_unit) +
                                                " bytes and dst gpas.length * " + std::to_string(dst_unit));
  }
  return a;
}

// gcmSealPages(key32, src, dst, gpas: Float64Array, firstSeq): page i of src
// is sealed into dst at i * 4112 (ciphertext then 16-byte tag) with sequence
// number firstSeq + i and its GPA gpas[i] (PageSeal, as the page pipeline).
Napi::Value GcmSealPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GcmArgs a = GetGcmArgs(info, kPage, kSealed);
  return GuardSteps(env, [&] {
    PageSeal seal(a.key.Data());
    for (size_t i = 0; i < a.n; ++i) {
      uint64_t gpa = IndexAt(env, a.gpas, i, kMaxSafeInteger + 1, "gpas");
      seal.Page(gpa, a.seq + i, a.src.Data() + i * kPage, a.dst.Data() + i * kSealed);
    }
    return env.Undefined();
  });
}

// gcmOpenPages(key32, src, dst, gpas, firstSeq): the inverse; returns the
// index of the first page whose tag does not verify, or -1 when all do.
Napi::Value GcmOpenPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GcmArgs a = GetGcmArgs(info, kSealed, kPage);
  return GuardSteps(env, [&] {
    PageOpen open(a.key.Data());
    for (size_t i = 0; i < a.n; ++i) {
      uint64_t gpa = IndexAt(env, a.gpas, i, kMaxSafeInteger + 1, "gpas");
      if (!open.Page(gpa, a.seq + i, a.src.Data() + i * kSealed, a.dst.Data() + i * kPage)) {
        return Napi::Number::New(env, static_cast<double>(i));
      }
    }
    return Napi::Number::New(env, -1);
  });
}

// xtsGather(key32, encrypt, memory, gfns, out): page gfns[i] of memory (tweak
// = its GPA) goes through XTS into out at i * 4096. xtsScatter(key32, encrypt,
// src, memory, gfns) is the reverse direction: src page i into memory page
// gfns[i]. One context for the batch; the per-page loop stays native.
Napi::Value XtsIndexed(const Napi::CallbackInfo& info, bool gather) {
  Napi::Env env = info.Env();
  auto key = GetBytes(info, 0, "key");
  bool encrypt = info[1].ToBoolean();
  auto a = GetBytes(info, 2, gather ? "memory" : "src");
  auto b = GetBytes(info, 3, gather ? "out" : "memory");
  auto gfns = GetFloat64s(info, 4, "gfns");
  auto memory = gather ? a : b;
  auto linear = gather ? b : a;
  size_t n = gfns.ElementLength();
  if (key.ByteLength() != 32) throw Napi::RangeError::New(env, "key must be 32 bytes (AES-128-XTS)");
  if (linear.ByteLength() < CheckedBytes(env, n, kPage, "gfns.length")) {
    throw Napi::RangeError::New(env, "the linear buffer must hold gfns.length pages");
  }
  uint64_t mem_pages = memory.ByteLength() / kPage;
  CipherCtx ctx = XtsContext(env, key.Data(), encrypt);
  for (size_t i = 0; i < n; ++i) {
    uint64_t gfn = IndexAt(env, gfns, i, mem_pages, "gfns");
    uint8_t* mem = memory.Data() + gfn * kPage;
    uint8_t* lin = linear.Data() + i * kPage;
    XtsPage(env, ctx.get(), gfn * kPage, gather ? mem : lin, gather ? lin : mem);
  }
  return env.Undefined();
}

// viewDigests(key32, memory, cbits, firstGfn, npages, out): SHA-256 of the
// guest's view of each page (XTS-decrypted where the c-bit bitmap has the
// page's bit set, raw otherwise) into out at i * 32.
Napi::Value ViewDigests(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto key = GetBytes(info, 0, "key");
  auto memory = GetBytes(info, 1, "memory");
  WordsArg cbits = GetWords(info, 2, "cbits");
  uint64_t first = GetIndex(info, 3, "firstGfn");
  uint64_t npages = GetIndex(info, 4, "npages");
  auto out = GetBytes(info, 5, "out");
  if (key.ByteLength() != 32) throw Napi::RangeError::New(env, "key must be 32 bytes (AES-128-XTS)");
  // Compared in pages, never as a byte product that could wrap.
  uint64_t mem_pages = memory.ByteLength() / kPage;
  if (first > mem_pages || npages > mem_pages - first || first + npages > cbits.nwords * 64) {
    throw Napi::RangeError::New(env, "range exceeds memory or the c-bit bitmap");
  }
  if (out.ByteLength() < CheckedBytes(env, npages, 32, "npages")) throw Napi::RangeError::New(env, "out must hold npages * 32 bytes");
  CipherCtx ctx = XtsContext(env, key.Data(), false);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  uint8_t plain[kPage];
  for (uint64_t i = 0; i < npages; ++i) {
    uint64_t gfn = first + i;
    const uint8_t* page = memory.Data() + gfn * kPage;
    if ((cbits.words[gfn / 64] >> (gfn % 64)) & 1) {
      XtsPage(env, ctx.get(), gfn * kPage, page, plain);
      page = plain;
    }
    unsigned int len = 0;
    if (EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1 || EVP_DigestUpdate(md.get(), page, kPage) != 1 ||
        EVP_DigestFinal_ex(md.get(), out.Data() + i * 32, &len) != 1) {
      OpenSslFail(env, "SHA-256");
    }
  }
  return env.Undefined();
}

}  // namespace

void InitCrypto(Napi::Env env, Napi::Object exports) {
  exports.Set("xtsPages", Napi::Function::New(env, XtsPages, "xtsPages"));
  exports.Set("gcmSealPages", Napi::Function::New(env, GcmSealPages, "gcmSealPages"));
  exports.Set("gcmOpenPages", Napi::Function::New(env, GcmOpenPages, "gcmOpenPages"));
  exports.Set("xtsGather", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return XtsIndexed(i, true); }, "xtsGather"));
  exports.Set("xtsScatter", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return XtsIndexed(i, false); }, "xtsScatter"));
  exports.Set("viewDigests", Napi::Function::New(env, ViewDigests, "viewDigests"));
}

}  // namespace sevtrack
