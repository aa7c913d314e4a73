#include <fmt/format.h>

#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/run_info.hpp"
#include "flashlab/harness/runner.hpp"

namespace flashlab::harness {

namespace {

void list_kernels() {
  fmt::print("{:<16} {:<36} {:>9} {:>11} {:>13} {:>14}\n", "variant", "kernel", "registers", "local bytes",
             "static shared", "dynamic shared");
  for (const kernels::Variant& v : variants()) {
    if (!v.kernels) continue;
    for (const kernels::KernelInfo& k : v.kernels()) {
      fmt::print("{:<16} {:<36} {:>9} {:>11} {:>13} {:>14}{}\n", v.id, k.name, k.registers, k.local_bytes,
                 k.static_shared_bytes, k.dynamic_shared_bytes, k.local_bytes > 0 ? "  (spills or stack)" : "");
    }
  }
}

}  // namespace

int list_variants(bool with_kernels) {
  fmt::print("{:<16} {:<6} {:<12} {}\n", "variant", "device", "materializes", "description");
  for (const kernels::Variant& v : variants()) {
    fmt::print("{:<16} {:<6} {:<12} {}\n", v.id, kernels::name(v.device), v.materializes ? "N x N" : "no", v.description);
    fmt::print("{:<16} supports: {}\n", "", v.supported);
    for (const kernels::VariantOption& o : v.options) fmt::print("{:<16} option [{}=...]: {}\n", "", o.name, o.meaning);
  }
  try {
    const auto gpu = make_gpu_backend();
    fmt::print("CUDA device: {}\n", device_block_json());
    if (with_kernels) list_kernels();
  } catch (const std::exception& e) {
    fmt::print("no CUDA device: {}\n", e.what());
  }
  return kExitOk;
}

}  // namespace flashlab::harness
