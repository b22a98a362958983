// The per-page work of a migration as reusable native steps, so the bindings
// (one batch per call) and the in-process limit benchmark run the same code:
// view MACs (the cheap verification digest), sealing a page from guest memory
// straight into a frame buffer, and opening a sealed page straight into guest
// memory. Every step reuses its cipher contexts; plaintext lives only in one
// 4 KiB scratch page per call, wiped when the call ends.
#pragma once
#include <openssl/evp.h>
#include <openssl/modes.h>

#include <cstdint>
#include <memory>

#include "page_args.h"

namespace sevtrack {

constexpr size_t kMac = 16;
constexpr size_t kSha256 = 32;

struct MdDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

struct Gcm128Deleter {
  void operator()(GCM128_CONTEXT* c) const { CRYPTO_gcm128_release(c); }
};

// Thrown by the steps; the bindings turn it into a JS Error.
struct StepError {
  const char* what;
};

// The view MAC: GMAC (AES-128-GCM with the page as associated data and no
// ciphertext) under a 16-byte key, nonce = the page's GPA (u64 LE) + 4 zero
// bytes. GHASH is a polynomial over GF(2^128) in H = AES_K(0): for H != 0 any
// difference confined to one 16-byte block (every single-bit difference)
// changes the tag, and two different pages collide with probability at most
// 257 / 2^128 for a key chosen independently of them.
//
// Computed with OpenSSL's GCM mode functions (modes.h: the same GHASH code,
// CLMUL/AVX where the CPU has it) over an AES-128-ECB context for the block
// cipher (AES-NI), not through an EVP AES-GCM context: EVP re-initialises
// the cipher with a new nonce per page through the provider's parameter
// lookups, which cost 0.12 us of a 0.61 us tag (measured, 4 KiB pages).
// The tags are the same as EVP's (tested against node:crypto's AES-128-GCM).
class ViewMac {
 public:
  explicit ViewMac(const uint8_t* key16);
  void Page(uint64_t gpa, const uint8_t* page, uint8_t* out16);

 private:
  CipherCtx block_;
  std::unique_ptr<GCM128_CONTEXT, Gcm128Deleter> gcm_;
};

// SHA-256 of a page (the digest the engine used before the view MAC).
class PageSha256 {
 public:
  PageSha256();
  void Page(const uint8_t* page, uint8_t* out32);

 private:
  std::unique_ptr<EVP_MD_CTX, MdDeleter> ctx_;
};

// The memory-encryption model of a guest's RAM, chosen per guest by its
// backend: the sim backend's AES-128-XTS (32-byte key, one data unit per
// page, tweak = GPA; docs/design.md §4) or the kvm backend's keystream
// (16-byte key, every 64-bit word XOR svt_keystream(key, its GPA);
// docs/kvm.md). The one place the pipeline differs between backends.
enum class MemoryCipher { kXts = 0, kKeystream = 1 };

// The kvm keystream over len bytes (a multiple of 8) starting at gpa: every
// 64-bit word XOR svt_keystream(key, its GPA), in to out (they may alias).
// Its own inverse: it turns raw bytes into the guest view and back.
void KeystreamXor(const uint64_t key[2], uint64_t gpa, const uint8_t* in, uint8_t* out, size_t len);

// Key bytes of a memory cipher.
size_t MemoryKeyBytes(MemoryCipher cipher);

// One guest page through the memory model: decrypt (encrypt = 0: raw bytes
// to the guest's view) or encrypt (1: view to raw bytes). in and out may alias
// only for the keystream.
class MemoryCodec {
 public:
  MemoryCodec(MemoryCipher cipher, const uint8_t* key, int encrypt);
  void Page(uint64_t gpa, const uint8_t* in, uint8_t* out);

 private:
  MemoryCipher cipher_;
  CipherCtx xts_;
  uint64_t stream_key_[2] = {0, 0};
};

// The PSP's sealing of one plaintext page under the 32-byte transport key:
// AES-256-GCM with nonce = seq and AAD = gpa || seq (SealNonceAndAad); out
// is the ciphertext then the 16-byte tag (4112 bytes).
class PageSeal {
 public:
  explicit PageSeal(const uint8_t* gcm_key32);
  void Page(uint64_t gpa, uint64_t seq, const uint8_t* plain, uint8_t* out);

 private:
  CipherCtx ctx_;
};

// The inverse: opens a sealed page into `plain`. Returns false when the tag
// does not verify (plain then holds unauthenticated bytes the caller must
// not use).
class PageOpen {
 public:
  explicit PageOpen(const uint8_t* gcm_key32);
  bool Page(uint64_t gpa, uint64_t seq, const uint8_t* sealed, uint8_t* plain);

 private:
  CipherCtx ctx_;
};

// SEND_UPDATE_DATA for one page: decrypt the guest page under the memory
// model (XTS: tweak = gpa) into `plain`, then seal it into out (PageSeal).
class Sealer {
 public:
  Sealer(const uint8_t* memory_key, const uint8_t* gcm_key32, MemoryCipher cipher = MemoryCipher::kXts);
  void Page(uint64_t gpa, uint64_t seq, const uint8_t* guest_page, uint8_t* plain, uint8_t* out);

 private:
  MemoryCodec memory_;
  PageSeal seal_;
};

// RECEIVE_UPDATE_DATA for one page: open the sealed page into `plain`; only if
// its tag verifies, encrypt it under the memory model into the guest page.
// Returns false (guest page untouched) when the tag does not verify.
class Opener {
 public:
  Opener(const uint8_t* gcm_key32, const uint8_t* memory_key, MemoryCipher cipher = MemoryCipher::kXts);
  bool Page(uint64_t gpa, uint64_t seq, const uint8_t* sealed, uint8_t* plain, uint8_t* guest_page);

 private:
  PageOpen open_;
  MemoryCodec memory_;
};

// The GCM nonce and associated data of a sealed page (docs/design.md §4).
void SealNonceAndAad(uint64_t seq, uint64_t gpa, uint8_t nonce[12], uint8_t aad[16]);

}  // namespace sevtrack
