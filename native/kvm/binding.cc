// N-API surface of the kvm backend: class KvmVm, kvmProbe, kvmLayout and
// kvmKeystreamXor. Native errors reach JavaScript with `code` ERR_KVM_SYSCALL
// (plus `errno` and `errnoName`), ERR_KVM_UNAVAILABLE or
// ERR_INVALID_ARGUMENT; src/vmm/kvm turns them into typed errors.
#include <cstddef>
#include <cstring>
#include <memory>

#include "../addon.h"
#include "../guest/abi.h"
#include "../page_pipeline.h"
#include "probe.h"
#include "sys.h"
#include "vm.h"

namespace sevtrack {
namespace {

using kvm::Record;

[[noreturn]] void Rethrow(Napi::Env env) {
  try {
    throw;
  } catch (const Napi::Error&) {
    throw;
  } catch (const kvm::SysError& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "ERR_KVM_SYSCALL"));
    err.Set("errno", Napi::Number::New(env, e.err()));
    err.Set("errnoName", Napi::String::New(env, kvm::ErrnoName(e.err())));
    throw err;
  } catch (const kvm::UnavailableError& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "ERR_KVM_UNAVAILABLE"));
    throw err;
  } catch (const std::invalid_argument& e) {
    Napi::Error err = Napi::RangeError::New(env, e.what());
    err.Set("code", Napi::String::New(env, "ERR_INVALID_ARGUMENT"));
    throw err;
  } catch (const std::exception& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "ERR_KVM"));
    throw err;
  }
}

Napi::Value NumberField(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("config.") + name + " must be a number");
  return v;
}

class KvmVmWrap : public Napi::ObjectWrap<KvmVmWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmVm",
                       {InstanceMethod("ram", &KvmVmWrap::Ram), InstanceMethod("info", &KvmVmWrap::Info),
                        InstanceMethod("resume", &KvmVmWrap::Resume), InstanceMethod("pause", &KvmVmWrap::Pause),
                        InstanceMethod("close", &KvmVmWrap::Close), InstanceMethod("drain", &KvmVmWrap::Drain),
                        InstanceMethod("harvestDirty", &KvmVmWrap::HarvestDirty),
                        InstanceMethod("saveVcpuState", &KvmVmWrap::SaveVcpuState),
                        InstanceMethod("loadVcpuState", &KvmVmWrap::LoadVcpuState),
                        InstanceMethod("status", &KvmVmWrap::Status)});
  }

  explicit KvmVmWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmVmWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "KvmVm needs a config object");
    auto o = info[0].As<Napi::Object>();
    kvm::VmConfig cfg;
    cfg.ram_pages = static_cast<uint64_t>(NumberField(o, "ramPages").As<Napi::Number>().Int64Value());
    cfg.vcpus = NumberField(o, "vcpus").As<Napi::Number>().Uint32Value();
    const uint32_t cpl = NumberField(o, "cpl").As<Napi::Number>().Uint32Value();
    cfg.stall_ms = static_cast<uint64_t>(NumberField(o, "stallMs").As<Napi::Number>().Int64Value());
    cfg.manual_protect = o.Get("manualProtect").ToBoolean();
    cfg.shim = o.Get("vmcall").ToBoolean() ? kvm::ShimMode::kVmcall : kvm::ShimMode::kPortIo;
    if (cfg.ram_pages < SVT_MIN_RAM_PAGES || cfg.ram_pages > SVT_MAX_RAM_PAGES || cfg.ram_pages % 64 != 0)
      throw Napi::RangeError::New(env, "config.ramPages must be a multiple of 64 in [" +
                                           std::to_string(SVT_MIN_RAM_PAGES) + ", " + std::to_string(SVT_MAX_RAM_PAGES) + "]");
    if (cfg.vcpus < 1 || cfg.vcpus > SVT_MAX_VCPUS)
      throw Napi::RangeError::New(env, "config.vcpus must be in [1, " + std::to_string(SVT_MAX_VCPUS) + "]");
    if (cpl != 0 && cpl != 3) throw Napi::RangeError::New(env, "config.cpl must be 0 or 3");
    cfg.profile = cpl == 0 ? kvm::Profile::kCpl0 : kvm::Profile::kCpl3;
    Napi::Value key = o.Get("key");
    if (!key.IsTypedArray() || key.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        key.As<Napi::Uint8Array>().ByteLength() != 16)
      throw Napi::TypeError::New(env, "config.key must be a 16-byte Uint8Array");
    memcpy(cfg.key, key.As<Napi::Uint8Array>().Data(), 16);
    Napi::Value cb = o.Get("onRecords");
    if (!cb.IsFunction()) throw Napi::TypeError::New(env, "config.onRecords must be a function");
    try {
      vm_ = std::make_unique<kvm::Vm>(cfg);
    } catch (...) {
      Rethrow(env);
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, cb.As<Napi::Function>(), "sevtrack-kvm-records", 0, 1);
    tsfn_.Unref(env);
    // Not the default call: that turns a failed call (Node tearing the
    // environment down at exit, with a notification still queued) into a C++
    // exception nobody catches, and the process aborts. A listener's own
    // exception still reaches JavaScript as an uncaught exception.
    vm_->SetNotify([this] { tsfn_.NonBlockingCall(CallOnRecords); });
  }

  ~KvmVmWrap() override { Shutdown(); }

  static void CallOnRecords(Napi::Env env, Napi::Function fn) {
    if (env == nullptr || fn.IsEmpty()) return;
    napi_value result;
    // The C call: a JS exception stays pending and becomes an uncaught exception.
    napi_call_function(env, env.Undefined(), fn, 0, nullptr, &result);
  }

 private:
  void Shutdown() {
    if (!vm_) return;
    vm_->Close();
    vm_.reset();
    tsfn_.Release();
  }

  kvm::Vm& vm(Napi::Env env) {
    if (!vm_) throw Napi::Error::New(env, "the VM is closed");
    return *vm_;
  }

  // The guest RAM as an ArrayBuffer over the VM's own mapping (no copy); the
  // mapping lives until both the VM and the buffer are gone.
  Napi::Value Ram(const Napi::CallbackInfo& info) {
    auto mapping = vm(info.Env()).ram();
    auto* keep = new std::shared_ptr<kvm::Mapping>(mapping);
    return Napi::ArrayBuffer::New(
        info.Env(), mapping->data, mapping->size,
        [](Napi::Env, void*, std::shared_ptr<kvm::Mapping>* hint) { delete hint; }, keep);
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    auto& v = vm(info.Env());
    auto o = Napi::Object::New(info.Env());
    o.Set("manualProtect", v.manual_protect());
    o.Set("syncRegs", v.sync_regs());
    return o;
  }

  Napi::Value Resume(const Napi::CallbackInfo& info) {
    auto& v = vm(info.Env());
    if (!running_) tsfn_.Ref(info.Env());
    running_ = true;
    try {
      v.Resume();
    } catch (...) {
      Rethrow(info.Env());
    }
    return info.Env().Undefined();
  }

  Napi::Value Pause(const Napi::CallbackInfo& info) {
    auto& v = vm(info.Env());
    const uint64_t timeout = GetIndex(info, 0, "timeoutMs");
    try {
      v.Pause(timeout);
    } catch (...) {
      Rethrow(info.Env());
    }
    if (running_) tsfn_.Unref(info.Env());
    running_ = false;
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (running_ && vm_) tsfn_.Unref(info.Env());
    running_ = false;
    Shutdown();
    return info.Env().Undefined();
  }

  // { records: BigUint64Array (8 words each: kind, vcpu, seq, nr, a0, a1, a2, ret), messages: string[] }
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<std::string> messages;
    std::vector<Record> records = vm(env).Drain(&messages);
    static_assert(sizeof(Record) == 64, "Record is 8 words");
    auto buf = Napi::ArrayBuffer::New(env, records.size() * sizeof(Record));
    if (!records.empty()) memcpy(buf.Data(), records.data(), records.size() * sizeof(Record));
    napi_value arr;
    napi_create_typedarray(env, napi_biguint64_array, records.size() * 8, buf, 0, &arr);
    auto out = Napi::Object::New(env);
    out.Set("records", Napi::Value(env, arr));
    auto msgs = Napi::Array::New(env, messages.size());
    for (size_t i = 0; i < messages.size(); ++i) msgs.Set(static_cast<uint32_t>(i), messages[i]);
    out.Set("messages", msgs);
    return out;
  }

  Napi::Value HarvestDirty(const Napi::CallbackInfo& info) {
    WordsArg out = GetWords(info, 0, "out");
    try {
      return Napi::Number::New(info.Env(), static_cast<double>(vm(info.Env()).HarvestDirty(out.words, out.nwords)));
    } catch (...) {
      Rethrow(info.Env());
    }
  }

  Napi::Value SaveVcpuState(const Napi::CallbackInfo& info) {
    const uint64_t index = GetIndex(info, 0, "vcpu");
    try {
      auto bytes = vm(info.Env()).SaveVcpu(static_cast<uint32_t>(index));
      auto arr = Napi::Uint8Array::New(info.Env(), bytes.size());
      memcpy(arr.Data(), bytes.data(), bytes.size());
      return arr;
    } catch (...) {
      Rethrow(info.Env());
    }
  }

  Napi::Value LoadVcpuState(const Napi::CallbackInfo& info) {
    const uint64_t index = GetIndex(info, 0, "vcpu");
    if (info.Length() < 2 || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(info.Env(), "state must be a Uint8Array from saveVcpuState");
    auto bytes = info[1].As<Napi::Uint8Array>();
    try {
      vm(info.Env()).LoadVcpu(static_cast<uint32_t>(index), bytes.Data(), bytes.ByteLength());
    } catch (...) {
      Rethrow(info.Env());
    }
    return info.Env().Undefined();
  }

  Napi::Value Status(const Napi::CallbackInfo& info) {
    auto st = vm(info.Env()).Status();
    auto arr = Napi::Array::New(info.Env(), st.size());
    for (size_t i = 0; i < st.size(); ++i) {
      auto o = Napi::Object::New(info.Env());
      o.Set("parked", st[i].parked);
      o.Set("failed", st[i].failed);
      o.Set("exits", static_cast<double>(st[i].exits));
      o.Set("kicks", static_cast<double>(st[i].kicks));
      arr.Set(static_cast<uint32_t>(i), o);
    }
    return arr;
  }

  std::unique_ptr<kvm::Vm> vm_;
  Napi::ThreadSafeFunction tsfn_;
  bool running_ = false;
};

Napi::Object RunProbeObject(Napi::Env env, const kvm::RunProbe& p) {
  auto o = Napi::Object::New(env);
  o.Set("ok", p.ok);
  o.Set("detail", p.detail);
  return o;
}

Napi::Value KvmProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto& r = kvm::Probe();
  auto o = Napi::Object::New(env);
  o.Set("available", r.available);
  o.Set("reason", r.reason);
  o.Set("apiVersion", r.api_version);
  auto caps = Napi::Object::New(env);
  for (const auto& c : r.caps) caps.Set(c.first, c.second);
  o.Set("caps", caps);
  o.Set("cpl0", RunProbeObject(env, r.cpl0));
  o.Set("cpl3", RunProbeObject(env, r.cpl3));
  o.Set("vmcall", RunProbeObject(env, r.vmcall));
  return o;
}

// The numbers of native/guest/abi.h, so TypeScript never restates them.
Napi::Value KvmLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
  auto n = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  n("magic", static_cast<double>(SVT_GUEST_MAGIC));
  n("version", SVT_GUEST_VERSION);
  n("controlGpa", SVT_CONTROL_GPA);
  n("cbitTableGpa", SVT_CBIT_TABLE_GPA);
  n("codeGpa", SVT_CODE_GPA);
  n("codeMax", SVT_CODE_MAX);
  n("dataGpa", SVT_DATA_GPA);
  n("maxVcpus", SVT_MAX_VCPUS);
  n("minRamPages", SVT_MIN_RAM_PAGES);
  n("maxRamPages", static_cast<double>(SVT_MAX_RAM_PAGES));
  n("offVersion", offsetof(svt_control, version));
  n("offVcpus", offsetof(svt_control, vcpus));
  n("offRamPages", offsetof(svt_control, ram_pages));
  n("offWorkload", offsetof(svt_control, workload));
  n("offShimMode", offsetof(svt_control, shim_mode));
  n("offSeed", offsetof(svt_control, seed));
  n("offStride", offsetof(svt_control, stride));
  n("offIteration", offsetof(svt_control, iteration));
  n("offStop", offsetof(svt_control, stop));
  n("offCpuidFeatures", offsetof(svt_control, cpuid_features));
  n("offOpsPerMs", offsetof(svt_control, ops_per_ms));
  n("offVcpu", offsetof(svt_control, vcpu));
  n("vcpuCountersSize", sizeof(svt_vcpu_counters));
  n("offProgress", offsetof(svt_vcpu_counters, progress));
  n("offWrites", offsetof(svt_vcpu_counters, writes));
  n("offConversions", offsetof(svt_vcpu_counters, conversions));
  n("offRejected", offsetof(svt_vcpu_counters, rejected));
  n("offLastRet", offsetof(svt_vcpu_counters, last_ret));
  n("offPass", offsetof(svt_vcpu_counters, pass));
  return o;
}

// kvmKeystreamXor(key16, bytes, firstGpa): XORs every 8-byte word of bytes
// with svt_keystream(key, gpa of that word): the guest view of encrypted
// pages from raw bytes, or the raw bytes from a guest view (it is its own inverse).
Napi::Value KvmKeystreamXor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsTypedArray())
    throw Napi::TypeError::New(env, "kvmKeystreamXor(key: Uint8Array, bytes: Uint8Array, firstGpa: number)");
  auto key = info[0].As<Napi::Uint8Array>();
  auto bytes = info[1].As<Napi::Uint8Array>();
  const uint64_t gpa = GetIndex(info, 2, "firstGpa");
  if (key.ByteLength() != 16) throw Napi::RangeError::New(env, "key must be 16 bytes");
  if (bytes.ByteLength() % 8 != 0 || gpa % 8 != 0)
    throw Napi::RangeError::New(env, "bytes and firstGpa must be multiples of 8 (whole guest words)");
  uint64_t k[2];
  memcpy(k, key.Data(), 16);
  KeystreamXor(k, gpa, bytes.Data(), bytes.Data(), bytes.ByteLength());
  return env.Undefined();
}

}  // namespace

void InitSev(Napi::Env env, Napi::Object exports);

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("KvmVm", KvmVmWrap::Define(env));
  exports.Set("kvmProbe", Napi::Function::New(env, KvmProbe));
  exports.Set("kvmLayout", Napi::Function::New(env, KvmLayout));
  exports.Set("kvmKeystreamXor", Napi::Function::New(env, KvmKeystreamXor));
  InitSev(env, exports);
}

}  // namespace sevtrack
