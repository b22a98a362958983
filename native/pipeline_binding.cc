// N-API surface of the page pipeline (page_pipeline.h): one call per batch,
// the per-page loop native. Frames are caller-provided buffers written at an
// offset, so a sealed batch lands where the stream frame wants it with no copy.
#include <openssl/crypto.h>

#include <cstring>

#include <string>
#include <vector>

#include "addon.h"
#include "page_args.h"
#include "page_pipeline.h"
#include "step_guard.h"

namespace sevtrack {
namespace {

Napi::Uint8Array Key(const Napi::CallbackInfo& info, size_t index, const char* name, size_t bytes) {
  auto key = GetBytes(info, index, name);
  if (key.ByteLength() != bytes) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be " + std::to_string(bytes) + " bytes, got " +
                                                std::to_string(key.ByteLength()));
  }
  return key;
}

// The optional memory cipher at `index` (undefined: 0), as page-crypto.ts
// numbers it: 0 AES-128-XTS (the sim backend), 1 the keystream (the kvm backend).
MemoryCipher CipherArg(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return MemoryCipher::kXts;
  if (!info[index].IsNumber()) throw Napi::TypeError::New(info.Env(), "cipher must be 0 (xts) or 1 (keystream)");
  double c = info[index].As<Napi::Number>().DoubleValue();
  if (c == 0) return MemoryCipher::kXts;
  if (c == 1) return MemoryCipher::kKeystream;
  throw Napi::RangeError::New(info.Env(), "cipher must be 0 (xts) or 1 (keystream), got " + std::to_string(c));
}

// One plaintext scratch page per thread, reused by every call (faulted in
// once) and wiped at the end of each call: plaintext never outlives a call.
uint8_t* Scratch() {
  alignas(64) static thread_local uint8_t page[kPage];
  return page;
}

struct ScratchWipe {
  ~ScratchWipe() { OPENSSL_cleanse(Scratch(), kPage); }
};

// The optional (macKey, macs, byGfn) at `index`: macKey undefined for none,
// else a 16-byte key and an output of n * 16 bytes (page i's MAC at i * 16),
// or with byGfn one of memPages * 16 bytes (page gfn's MAC at gfn * 16: the
// caller's per-guest digest table).
struct MacOut {
  std::unique_ptr<ViewMac> mac;
  uint8_t* out = nullptr;
  bool by_gfn = false;
  uint8_t* At(size_t i, uint64_t gfn) const { return out + (by_gfn ? gfn : i) * kMac; }
};

MacOut GetMacOut(const Napi::CallbackInfo& info, size_t index, size_t n, uint64_t mem_pages) {
  MacOut m;
  if (info.Length() <= index || info[index].IsUndefined() || info[index].IsNull()) return m;
  auto key = Key(info, index, "macKey", kMac);
  auto out = GetBytes(info, index + 1, "macs");
  m.by_gfn = info.Length() > index + 2 && info[index + 2].ToBoolean();
  uint64_t slots = m.by_gfn ? mem_pages : n;
  if (out.ByteLength() < CheckedBytes(info.Env(), slots, kMac, "MAC slots")) {
    throw Napi::RangeError::New(info.Env(), m.by_gfn ? "macs (byGfn) must hold memory pages * 16 bytes"
                                                     : "macs must hold gfns.length * 16 bytes");
  }
  m.mac = std::make_unique<ViewMac>(key.Data());
  m.out = out.Data();
  return m;
}

// The frame region [offset, offset + n * unit) must lie inside frame.
uint8_t* FrameAt(const Napi::CallbackInfo& info, Napi::Uint8Array& frame, uint64_t offset, size_t n, size_t unit) {
  size_t bytes = CheckedBytes(info.Env(), n, unit, "gfns.length");
  if (offset > frame.ByteLength() || bytes > frame.ByteLength() - offset) {
    throw Napi::RangeError::New(info.Env(), "frame holds " + std::to_string(frame.ByteLength()) + " bytes; offset " +
                                                std::to_string(offset) + " + " + std::to_string(n) + " pages of " +
                                                std::to_string(unit) + " bytes do not fit");
  }
  return frame.Data() + offset;
}

// Every gfn checked (below memPages) and copied before any page is written: a
// gfn list on shared memory cannot change between the check and the write.
std::vector<uint64_t> CheckedGfns(Napi::Env env, const Napi::Float64Array& gfns, uint64_t mem_pages) {
  std::vector<uint64_t> out(gfns.ElementLength());
  for (size_t i = 0; i < out.size(); ++i) out[i] = IndexAt(env, gfns, i, mem_pages, "gfns");
  return out;
}

// viewMacs(memoryKey, macKey16, memory, cbits, firstGfn, npages, out
// [, cipher]): the view MAC of the guest's view of each page (decrypted under
// the memory cipher where cbits has its bit) into out at i * 16. The cheap
// replacement of viewDigests' SHA-256.
Napi::Value ViewMacs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MemoryCipher cipher = CipherArg(info, 7);
  auto memory_key = Key(info, 0, "memoryKey", MemoryKeyBytes(cipher));
  auto mac_key = Key(info, 1, "macKey", kMac);
  auto memory = GetBytes(info, 2, "memory");
  WordsArg cbits = GetWords(info, 3, "cbits");
  uint64_t first = GetIndex(info, 4, "firstGfn");
  uint64_t npages = GetIndex(info, 5, "npages");
  auto out = GetBytes(info, 6, "out");
  uint64_t mem_pages = memory.ByteLength() / kPage;
  if (first > mem_pages || npages > mem_pages - first || first + npages > cbits.nwords * 64) {
    throw Napi::RangeError::New(env, "range (firstGfn " + std::to_string(first) + ", npages " + std::to_string(npages) +
                                         ") exceeds memory or the c-bit bitmap");
  }
  if (out.ByteLength() < CheckedBytes(env, npages, kMac, "npages")) {
    throw Napi::RangeError::New(env, "out must hold npages * 16 bytes");
  }
  return GuardSteps(env, [&] {
    ScratchWipe wipe;
    ViewMac mac(mac_key.Data());
    MemoryCodec decrypt(cipher, memory_key.Data(), 0);
    uint8_t* plain = Scratch();
    for (uint64_t i = 0; i < npages; ++i) {
      uint64_t gfn = first + i;
      const uint8_t* page = memory.Data() + gfn * kPage;
      if ((cbits.words[gfn / 64] >> (gfn % 64)) & 1) {
        decrypt.Page(gfn * kPage, page, plain);
        page = plain;
      }
      mac.Page(gfn * kPage, page, out.Data() + i * kMac);
    }
    return env.Undefined();
  });
}

// sealPagesToFrame(memoryKey, gcmKey32, memory, gfns, firstSeq, frame, offset
// [, macKey16, macs, byGfn, cipher]): SEND_UPDATE_DATA of guest pages gfns[i],
// decrypted under the memory cipher and sealed into frame at offset + i * 4112
// with sequence firstSeq + i; with macKey, the view MAC of each plaintext into
// macs at i * 16 in the same pass.
Napi::Value SealPagesToFrame(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MemoryCipher cipher = CipherArg(info, 10);
  auto memory_key = Key(info, 0, "memoryKey", MemoryKeyBytes(cipher));
  auto gcm_key = Key(info, 1, "gcmKey", 32);
  auto memory = GetBytes(info, 2, "memory");
  auto gfns = GetFloat64s(info, 3, "gfns");
  uint64_t seq = GetIndex(info, 4, "firstSeq");
  auto frame = GetBytes(info, 5, "frame");
  uint64_t offset = GetIndex(info, 6, "offset");
  size_t n = gfns.ElementLength();
  uint8_t* out = FrameAt(info, frame, offset, n, kSealed);
  uint64_t mem_pages = memory.ByteLength() / kPage;
  MacOut macs = GetMacOut(info, 7, n, mem_pages);
  return GuardSteps(env, [&] {
    ScratchWipe wipe;
    Sealer sealer(memory_key.Data(), gcm_key.Data(), cipher);
    uint8_t* plain = Scratch();
    for (size_t i = 0; i < n; ++i) {
      uint64_t gfn = IndexAt(env, gfns, i, mem_pages, "gfns");
      sealer.Page(gfn * kPage, seq + i, memory.Data() + gfn * kPage, plain, out + i * kSealed);
      if (macs.mac) macs.mac->Page(gfn * kPage, plain, macs.At(i, gfn));
    }
    return env.Undefined();
  });
}

// openFrameToPages(gcmKey32, memoryKey, frame, offset, gfns, firstSeq, memory
// [, macKey16, macs, byGfn, cipher]): RECEIVE_UPDATE_DATA straight into guest
// memory, each page encrypted under the memory cipher. Returns
// the index of the first page whose tag fails (that page and those after it
// are not written; those before it are), or -1 when all verify. Every gfn is
// checked before any page is written.
Napi::Value OpenFrameToPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MemoryCipher cipher = CipherArg(info, 10);
  auto gcm_key = Key(info, 0, "gcmKey", 32);
  auto memory_key = Key(info, 1, "memoryKey", MemoryKeyBytes(cipher));
  auto frame = GetBytes(info, 2, "frame");
  uint64_t offset = GetIndex(info, 3, "offset");
  auto gfns = GetFloat64s(info, 4, "gfns");
  uint64_t seq = GetIndex(info, 5, "firstSeq");
  auto memory = GetBytes(info, 6, "memory");
  size_t n = gfns.ElementLength();
  const uint8_t* in = FrameAt(info, frame, offset, n, kSealed);
  uint64_t mem_pages = memory.ByteLength() / kPage;
  MacOut macs = GetMacOut(info, 7, n, mem_pages);
  std::vector<uint64_t> checked = CheckedGfns(env, gfns, mem_pages);
  return GuardSteps(env, [&] {
    ScratchWipe wipe;
    Opener opener(gcm_key.Data(), memory_key.Data(), cipher);
    uint8_t* plain = Scratch();
    for (size_t i = 0; i < n; ++i) {
      uint64_t gfn = checked[i];
      if (!opener.Page(gfn * kPage, seq + i, in + i * kSealed, plain, memory.Data() + gfn * kPage)) {
        return Napi::Number::New(env, static_cast<double>(i));
      }
      if (macs.mac) macs.mac->Page(gfn * kPage, plain, macs.At(i, gfn));
    }
    return Napi::Number::New(env, -1);
  });
}

// copyPagesToFrame(memory, gfns, frame, offset [, macKey16, macs, byGfn]) and
// copyFrameToPages(frame, offset, memory, gfns [, macKey16, macs, byGfn]): shared
// pages as raw bytes between guest memory and a frame (4096 bytes each), with
// the view MAC of each (its raw bytes: a shared page's view) in the same pass.
Napi::Value CopyPages(const Napi::CallbackInfo& info, bool to_frame) {
  Napi::Env env = info.Env();
  auto memory = GetBytes(info, to_frame ? 0 : 2, "memory");
  auto gfns = GetFloat64s(info, to_frame ? 1 : 3, "gfns");
  auto frame = GetBytes(info, to_frame ? 2 : 0, "frame");
  uint64_t offset = GetIndex(info, to_frame ? 3 : 1, "offset");
  size_t n = gfns.ElementLength();
  uint8_t* linear = FrameAt(info, frame, offset, n, kPage);
  uint64_t mem_pages = memory.ByteLength() / kPage;
  MacOut macs = GetMacOut(info, 4, n, mem_pages);
  std::vector<uint64_t> checked = CheckedGfns(env, gfns, mem_pages);
  return GuardSteps(env, [&] {
    for (size_t i = 0; i < n; ++i) {
      uint64_t gfn = checked[i];
      uint8_t* page = memory.Data() + gfn * kPage;
      uint8_t* slot = linear + i * kPage;
      std::memcpy(to_frame ? slot : page, to_frame ? page : slot, kPage);
      if (macs.mac) macs.mac->Page(gfn * kPage, page, macs.At(i, gfn));
    }
    return env.Undefined();
  });
}

}  // namespace

void InitPipeline(Napi::Env env, Napi::Object exports) {
  exports.Set("viewMacs", Napi::Function::New(env, ViewMacs, "viewMacs"));
  exports.Set("sealPagesToFrame", Napi::Function::New(env, SealPagesToFrame, "sealPagesToFrame"));
  exports.Set("openFrameToPages", Napi::Function::New(env, OpenFrameToPages, "openFrameToPages"));
  exports.Set("copyPagesToFrame",
              Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return CopyPages(i, true); }, "copyPagesToFrame"));
  exports.Set("copyFrameToPages",
              Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return CopyPages(i, false); }, "copyFrameToPages"));
}

}  // namespace sevtrack
