// The per-page work of a migration as reusable native steps, so the bindings
// (one batch per call) and the in-process limit benchmark run the same code:
// view MACs (the cheap verification digest), sealing a page from guest memory
// straight into a frame buffer, and opening a sealed page straight into guest
// memory. Every step reuses its cipher contexts; plaintext lives only in one
// 4 KiB scratch page per call, wiped when the call ends.
#pragma once
#include <openssl/evp.h>

#include <cstdint>
#include <memory>

#include "page_args.h"

namespace sevtrack {

constexpr size_t kMac = 16;
constexpr size_t kSha256 = 32;

struct MdDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
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
class ViewMac {
 public:
  explicit ViewMac(const uint8_t* key16);
  void Page(uint64_t gpa, const uint8_t* page, uint8_t* out16);

 private:
  CipherCtx ctx_;
};

// SHA-256 of a page (the digest the engine used before the view MAC).
class PageSha256 {
 public:
  PageSha256();
  void Page(const uint8_t* page, uint8_t* out32);

 private:
  std::unique_ptr<EVP_MD_CTX, MdDeleter> ctx_;
};

// SEND_UPDATE_DATA for one page: XTS-decrypt the guest page (tweak = gpa) into
// `plain`, then AES-256-GCM seal it into out (4096 bytes, 16-byte tag) with
// nonce = seq and AAD = gpa || seq, as gcmSealPages does.
class Sealer {
 public:
  Sealer(const uint8_t* xts_key32, const uint8_t* gcm_key32);
  void Page(uint64_t gpa, uint64_t seq, const uint8_t* guest_page, uint8_t* plain, uint8_t* out);

 private:
  CipherCtx xts_, gcm_;
};

// RECEIVE_UPDATE_DATA for one page: open the sealed page into `plain`; only if
// its tag verifies, XTS-encrypt it into the guest page. Returns false (guest
// page untouched) when the tag does not verify.
class Opener {
 public:
  Opener(const uint8_t* gcm_key32, const uint8_t* xts_key32);
  bool Page(uint64_t gpa, uint64_t seq, const uint8_t* sealed, uint8_t* plain, uint8_t* guest_page);

 private:
  CipherCtx gcm_, xts_;
};

// The GCM nonce and associated data of a sealed page (docs/design.md §4).
void SealNonceAndAad(uint64_t seq, uint64_t gpa, uint8_t nonce[12], uint8_t aad[16]);

}  // namespace sevtrack
