#include "flashlab/harness/registry.hpp"

namespace flashlab::harness {

const std::vector<kernels::Variant>& variants() {
  static const std::vector<kernels::Variant> all = [] {
    std::vector<kernels::Variant> v = cpu_variants();
    for (const kernels::Variant& gpu : kernels::gpu_variants()) v.push_back(gpu);
    return v;
  }();
  return all;
}

const kernels::Variant* find_variant(std::string_view id) {
  for (const kernels::Variant& v : variants()) {
    if (v.id == id) return &v;
  }
  return nullptr;
}

}  // namespace flashlab::harness
