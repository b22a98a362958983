#include "page_pipeline.h"

#include <cstring>

#include "guest/abi.h"

namespace sevtrack {

namespace {

void Check(int rc, const char* what) {
  if (rc != 1) throw StepError{what};
}

CipherCtx NewCipher(const EVP_CIPHER* cipher, const uint8_t* key, int encrypt, const char* what) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) throw StepError{what};
  Check(EVP_CipherInit_ex(ctx.get(), cipher, nullptr, key, nullptr, encrypt), what);
  return ctx;
}

void Xts(EVP_CIPHER_CTX* ctx, uint64_t gpa, const uint8_t* in, uint8_t* out) {
  uint8_t tweak[16] = {0};
  Le64(tweak, gpa);
  int outl = 0;
  Check(EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, tweak, -1), "AES-128-XTS tweak");
  Check(EVP_CipherUpdate(ctx, out, &outl, in, static_cast<int>(kPage)), "AES-128-XTS update");
}

}  // namespace

void SealNonceAndAad(uint64_t seq, uint64_t gpa, uint8_t nonce[12], uint8_t aad[16]) {
  std::memset(nonce, 0, 12);
  Le64(nonce, seq);
  Le64(aad, gpa);
  Le64(aad + 8, seq);
}

namespace {

// GCM's block cipher: one AES-128 block through the ECB context passed as
// `key`. GCM's callback cannot report an error; the constructor makes the
// same call (AES_K(0), GHASH's H) under Check() first, so a context that
// could fail here never gets this far.
void AesBlock(const unsigned char in[16], unsigned char out[16], const void* key) {
  auto* ecb = static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(key));
  int outl = 0;
  EVP_EncryptUpdate(ecb, out, &outl, in, 16);
}

}  // namespace

ViewMac::ViewMac(const uint8_t* key16) : block_(NewCipher(EVP_aes_128_ecb(), key16, 1, "view MAC (AES-128) init")) {
  Check(EVP_CIPHER_CTX_set_padding(block_.get(), 0), "view MAC (AES-128) init");
  // H = AES_K(0^128) is GHASH's evaluation point; H = 0 would make every tag
  // independent of the page (probability 2^-128 for a random key).
  uint8_t zero[16] = {0}, h[16] = {0};
  int outl = 0;
  Check(EVP_EncryptUpdate(block_.get(), h, &outl, zero, sizeof zero), "view MAC key check");
  if (outl != 16) throw StepError{"view MAC key check"};
  uint8_t any = 0;
  for (int i = 0; i < 16; ++i) any |= h[i];
  if (any == 0) throw StepError{"view MAC key check (this key gives GHASH key H = 0: use another key)"};
  gcm_.reset(CRYPTO_gcm128_new(block_.get(), AesBlock));
  if (!gcm_) throw StepError{"view MAC (GCM) init"};
}

void ViewMac::Page(uint64_t gpa, const uint8_t* page, uint8_t* out16) {
  uint8_t nonce[12] = {0};
  Le64(nonce, gpa);
  CRYPTO_gcm128_setiv(gcm_.get(), nonce, sizeof nonce);
  if (CRYPTO_gcm128_aad(gcm_.get(), page, kPage) != 0) throw StepError{"view MAC update"};
  CRYPTO_gcm128_tag(gcm_.get(), out16, kMac);
}

PageSha256::PageSha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_) throw StepError{"SHA-256 init"};
}

void PageSha256::Page(const uint8_t* page, uint8_t* out32) {
  unsigned int len = 0;
  Check(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr), "SHA-256 init");
  Check(EVP_DigestUpdate(ctx_.get(), page, kPage), "SHA-256 update");
  Check(EVP_DigestFinal_ex(ctx_.get(), out32, &len), "SHA-256 final");
}

size_t MemoryKeyBytes(MemoryCipher cipher) { return cipher == MemoryCipher::kXts ? 32 : 16; }

MemoryCodec::MemoryCodec(MemoryCipher cipher, const uint8_t* key, int encrypt) : cipher_(cipher) {
  if (cipher == MemoryCipher::kXts)
    xts_ = NewCipher(EVP_aes_128_xts(), key, encrypt, "AES-128-XTS init (the two key halves must differ)");
  else
    std::memcpy(stream_key_, key, sizeof stream_key_);
}

void MemoryCodec::Page(uint64_t gpa, const uint8_t* in, uint8_t* out) {
  if (cipher_ == MemoryCipher::kXts) {
    Xts(xts_.get(), gpa, in, out);
    return;
  }
  // The keystream is its own inverse: encrypt and decrypt are the same XOR.
  KeystreamXor(stream_key_, gpa, in, out, kPage);
}

void KeystreamXor(const uint64_t key[2], uint64_t gpa, const uint8_t* in, uint8_t* out, size_t len) {
  for (size_t off = 0; off < len; off += 8) {
    uint64_t w;
    std::memcpy(&w, in + off, 8);
    w ^= svt_keystream(key, gpa + off);
    std::memcpy(out + off, &w, 8);
  }
}

PageSeal::PageSeal(const uint8_t* gcm_key32) : ctx_(NewCipher(EVP_aes_256_gcm(), gcm_key32, 1, "AES-256-GCM init")) {}

void PageSeal::Page(uint64_t gpa, uint64_t seq, const uint8_t* plain, uint8_t* out) {
  uint8_t nonce[12], aad[16];
  SealNonceAndAad(seq, gpa, nonce, aad);
  int outl = 0;
  Check(EVP_EncryptInit_ex(ctx_.get(), nullptr, nullptr, nullptr, nonce), "AES-256-GCM seal");
  Check(EVP_EncryptUpdate(ctx_.get(), nullptr, &outl, aad, sizeof aad), "AES-256-GCM seal");
  Check(EVP_EncryptUpdate(ctx_.get(), out, &outl, plain, static_cast<int>(kPage)), "AES-256-GCM seal");
  Check(EVP_EncryptFinal_ex(ctx_.get(), out + kPage, &outl), "AES-256-GCM seal");
  Check(EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_GET_TAG, kTag, out + kPage), "AES-256-GCM tag");
}

PageOpen::PageOpen(const uint8_t* gcm_key32) : ctx_(NewCipher(EVP_aes_256_gcm(), gcm_key32, 0, "AES-256-GCM init")) {}

bool PageOpen::Page(uint64_t gpa, uint64_t seq, const uint8_t* sealed, uint8_t* plain) {
  uint8_t nonce[12], aad[16], tag[kTag];
  SealNonceAndAad(seq, gpa, nonce, aad);
  std::memcpy(tag, sealed + kPage, kTag);
  int outl = 0;
  Check(EVP_DecryptInit_ex(ctx_.get(), nullptr, nullptr, nullptr, nonce), "AES-256-GCM open");
  Check(EVP_DecryptUpdate(ctx_.get(), nullptr, &outl, aad, sizeof aad), "AES-256-GCM open");
  Check(EVP_DecryptUpdate(ctx_.get(), plain, &outl, sealed, static_cast<int>(kPage)), "AES-256-GCM open");
  Check(EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_SET_TAG, kTag, tag), "AES-256-GCM open");
  return EVP_DecryptFinal_ex(ctx_.get(), tag, &outl) == 1;
}

Sealer::Sealer(const uint8_t* memory_key, const uint8_t* gcm_key32, MemoryCipher cipher)
    : memory_(cipher, memory_key, 0), seal_(gcm_key32) {}

void Sealer::Page(uint64_t gpa, uint64_t seq, const uint8_t* guest_page, uint8_t* plain, uint8_t* out) {
  memory_.Page(gpa, guest_page, plain);
  seal_.Page(gpa, seq, plain, out);
}

Opener::Opener(const uint8_t* gcm_key32, const uint8_t* memory_key, MemoryCipher cipher)
    : open_(gcm_key32), memory_(cipher, memory_key, 1) {}

bool Opener::Page(uint64_t gpa, uint64_t seq, const uint8_t* sealed, uint8_t* plain, uint8_t* guest_page) {
  if (!open_.Page(gpa, seq, sealed, plain)) return false;
  memory_.Page(gpa, plain, guest_page);
  return true;
}

}  // namespace sevtrack
