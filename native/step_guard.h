// Turns a page step's StepError (page_pipeline.h) into the JS Error the
// bindings throw: "OpenSSL <step> failed".
#pragma once
#include <napi.h>

#include <string>

#include "page_pipeline.h"

namespace sevtrack {

template <typename F>
Napi::Value GuardSteps(Napi::Env env, F f) {
  try {
    return f();
  } catch (const StepError& e) {
    throw Napi::Error::New(env, std::string("OpenSSL ") + e.what + " failed");
  }
}

}  // namespace sevtrack
