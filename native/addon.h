// Shared helpers for the N-API bindings: argument checking with messages that
// name the argument and the fix, so a JS caller never sees a bare crash.
#pragma once
#include <napi.h>
#include <cstdint>
#include <string>

namespace sevtrack {

// A bitmap argument: a Uint32Array whose length is even (whole 64-bit words)
// and whose byte offset is 8-aligned, viewed as 64-bit words.
struct WordsArg {
  uint64_t* words;
  size_t nwords;
};

WordsArg GetWords(const Napi::CallbackInfo& info, size_t index, const char* name);
uint64_t GetIndex(const Napi::CallbackInfo& info, size_t index, const char* name);

void InitBitmap(Napi::Env env, Napi::Object exports);
void InitCrypto(Napi::Env env, Napi::Object exports);
void InitSysgenid(Napi::Env env, Napi::Object exports);
void InitPipeline(Napi::Env env, Napi::Object exports);
void InitPipelineLimit(Napi::Env env, Napi::Object exports);
void InitKvm(Napi::Env env, Napi::Object exports);
void InitLock(Napi::Env env, Napi::Object exports);
void InitMemoryAdvice(Napi::Env env, Napi::Object exports);

}  // namespace sevtrack
