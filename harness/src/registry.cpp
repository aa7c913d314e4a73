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
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view term = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    const std::size_t equals = term.find('=');
    const std::string key(term.substr(0, equals));
    const std::string value(equals == std::string_view::npos ? "1" : term.substr(equals + 1));
    const auto& declared = choice.variant->options;
    const bool known = std::any_of(declared.begin(), declared.end(), [&](const auto& o) { return o.first == key; });
    if (!known) {
      std::string names;
      for (const auto& [option, meaning] : declared) names += (names.empty() ? "" : ", ") + option;
      choice.error = fmt::format("variant '{}': unknown option '{}' (options of {}: {})", name, key, id,
                                 names.empty() ? "none" : names);
      choice.variant = nullptr;
      return choice;
    }
    if (key == "deterministic" && value != "0" && value != "1") {
      choice.error = fmt::format("variant '{}': deterministic must be 0 or 1, found '{}'", name, value);
      choice.variant = nullptr;
      return choice;
    }
    if ((key == "br" || key == "bc") &&
        (value.empty() || value.size() > 4 || value.find_first_not_of("0123456789") != std::string::npos ||
         std::stoi(value) == 0)) {
      choice.error = fmt::format("variant '{}': {} must be a positive integer (a tile size), found '{}'", name, key,
                                 value);
      choice.variant = nullptr;
      return choice;
    }
    choice.options[key] = value;
  }
  if (choice.options.count("br") != choice.options.count("bc")) {
    choice.error = fmt::format("variant '{}': br and bc go together (e.g. {}[br=128,bc=64])", name, id);
    choice.variant = nullptr;
  }
  return choice;
}

const kernels::Variant* find_variant(std::string_view name) { return resolve_variant(name).variant; }

void apply_options(const VariantChoice& choice, kernels::AttentionParams& params) {
  const auto deterministic = choice.options.find("deterministic");
  params.deterministic = deterministic != choice.options.end() && deterministic->second == "1";
  const auto br = choice.options.find("br");
  const auto bc = choice.options.find("bc");
  params.block_m = br != choice.options.end() ? std::stoi(br->second) : 0;
  params.block_n = bc != choice.options.end() ? std::stoi(bc->second) : 0;
}

}  // namespace flashlab::harness
