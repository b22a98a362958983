{
  "targets": [
    {
      "target_name": "sevtrack_native",
      "sources": [
        "native/addon.cc",
        "native/bitmap.cc",
        "native/bitmap_binding.cc",
        "native/crypto_binding.cc",
        "native/sysgenid_binding.cc",
        "native/page_args.cc",
        "native/page_pipeline.cc",
        "native/pipeline_binding.cc",
        "native/pipeline_limit.cc",
        "native/kvm/binding.cc",
        "native/kvm/longmode.cc",
        "native/kvm/probe.cc",
        "native/kvm/sev.cc",
        "native/kvm/sys.cc",
        "native/kvm/vcpu.cc",
        "native/kvm/vcpu_state.cc",
        "native/kvm/vm.cc",
        "native/lock_binding.cc",
        "native/memory_advice.cc",
        "native/resident_memory.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS: a worker terminated inside a
      # native call ends alone; without it the call's result, which cannot be
      # made in a terminating isolate, aborted the whole process
      # (test/common/native-terminate.test.ts).
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-Wall", "-Wextra"],
      "conditions": [
        ["target_arch=='x64'", { "cflags_cc": ["-mpopcnt", "-mbmi"] }]
      ]
    },
    {
      "target_name": "sysgenid-watch",
      "type": "executable",
      "sources": ["native/examples/sysgenid-watch.c"],
      "cflags": ["-std=c11", "-O2", "-Wall", "-Wextra"]
    }
  ]
}
