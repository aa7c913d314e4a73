#include "flashlab/harness/registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string>

namespace flashlab::harness {

const std::vector<kernels::Variant>& variants() {
  static const std::vector<kernels::Variant> all = [] {
    std::vector<kernels::Variant> v = cpu_variants();
    for (const kernels::Variant& gpu : kernels::gpu_variants()) v.push_back(gpu);
    return v;
  }();
  return all;
}

namespace {
// The id of a variant as a suite names it, `id` or `id[options]`.
std::string_view id_of(std::string_view name) { return name.substr(0, name.find('[')); }
}  // namespace

std::vector<std::string> unknown_variant_ids(const std::vector<std::string>& names) {
  std::vector<std::string> unknown;
  for (const std::string& name : names) {
    const std::string id(id_of(name));
    const bool known = std::find(std::begin(kVariantIds), std::end(kVariantIds), id) != std::end(kVariantIds);
    if (!known && std::find(unknown.begin(), unknown.end(), id) == unknown.end()) unknown.push_back(id);
  }
  return unknown;
}

std::string variant_id_list() {
  std::string list;
  for (const std::string_view id : kVariantIds) list += (list.empty() ? "" : ", ") + std::string(id);
  return list;
}

VariantChoice resolve_variant(std::string_view name) {
  VariantChoice choice;
  const std::size_t open = name.find('[');
  const std::string_view id = id_of(name);
  for (const kernels::Variant& v : variants()) {
    if (v.id == id) choice.variant = &v;
  }
  if (!choice.variant) {
    choice.error = fmt::format("no variant '{}' in this build (flashlab list shows them)", id);
    return choice;
  }
  if (open == std::string_view::npos) return choice;
  if (name.back() != ']') {
    choice.variant = nullptr;
    choice.error = fmt::format("variant '{}': options go in brackets, e.g. {}[name=value]", name, id);
    return choice;
  }
  std::string_view rest = name.substr(open + 1, name.size() - open - 2);
  auto refuse = [&](const std::string& why) {
    choice.error = fmt::format("variant '{}': {}", name, why);
    choice.variant = nullptr;
    return choice;
  };
  const std::vector<kernels::VariantOption>& declared = choice.variant->options;
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view term = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    const std::size_t equals = term.find('=');
    const std::string key(term.substr(0, equals));
    const std::string value(equals == std::string_view::npos ? "1" : term.substr(equals + 1));
    const auto option = std::find_if(declared.begin(), declared.end(), [&](const auto& o) { return o.name == key; });
    if (option == declared.end()) {
      std::string names;
      for (const kernels::VariantOption& o : declared) names += (names.empty() ? "" : ", ") + o.name;
      return refuse(fmt::format("unknown option '{}' (options of {}: {})", key, id, names.empty() ? "none" : names));
    }
    if (choice.given.count(key)) return refuse(fmt::format("option '{}' given twice", key));
    if (const std::string why = option->apply(value, choice.options); !why.empty()) return refuse(why);
    choice.given[key] = value;
  }
  if (choice.variant->check_options) {
    if (const std::string why = choice.variant->check_options(choice.options); !why.empty()) return refuse(why);
  }
  return choice;
}

const kernels::Variant* find_variant(std::string_view name) { return resolve_variant(name).variant; }

void apply_options(const VariantChoice& choice, kernels::AttentionParams& params) { params.options = choice.options; }

}  // namespace flashlab::harness
