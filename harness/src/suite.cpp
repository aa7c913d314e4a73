// Suite files (experiments/README.md): parsing with toml++, validation of every key before anything runs,
// and expansion of the axes into rows in canonical order.
#include "flashlab/harness/suite.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string_view>
#include <variant>

#include "flashlab/harness/hash.hpp"

namespace flashlab::harness {
namespace {

// A cross-product larger than this is certainly a mistake (no GPU runs a million rows), and would only
// exhaust memory before the first row runs.
constexpr std::int64_t kMaxRows = 1'000'000;

// The row keys in canonical expansion order (experiments/README.md): the first varies slowest.
enum Field : int {
  kVariant,
  kPass,
  kDType,
  kDistribution,
  kBatch,
  kHeads,
  kHeadsKv,
  kSeqlen,
  kSeqlenQ,
  kSeqlenK,
  kSeqlensQ,
  kSeqlensK,
  kSeqlens,
  kHeadDim,
  kHeadDimV,
  kCausal,
  kWindow,
  kSoftmaxScale,
  kTokens,
  kModelDim,
  kDropout,
  kDropoutSeed,
  kKeyPadding,
  kPaddedFraction,
  kValidLengths,
  kPaddingSeed,
  kFieldCount
};

// What a key holds: its TOML type and the values allowed.
// `lengths`: a list of sequence lengths (seqlens_q, seqlens_k, valid_lengths); `drawn`: the table of drawn lengths
// (seqlens); `padding`: the side of a key-padding mask; `fraction`: a number of [0, 1]; `probability`: a number
// of [0, 1); `seed`: an integer >= 0.
enum class Kind {
  text, pass, dtype, distribution, count, flag, window, scale, lengths, drawn, padding, fraction, probability, seed
};

struct FieldSpec {
  std::string_view name;
  Kind kind;
};

constexpr std::array<FieldSpec, kFieldCount> kFields = {{
    {"variant", Kind::text},
    {"pass", Kind::pass},
    {"dtype", Kind::dtype},
    {"distribution", Kind::distribution},
    {"batch", Kind::count},
    {"heads", Kind::count},
    {"heads_kv", Kind::count},
    {"seqlen", Kind::count},
    {"seqlen_q", Kind::count},
    {"seqlen_k", Kind::count},
    {"seqlens_q", Kind::lengths},
    {"seqlens_k", Kind::lengths},
    {"seqlens", Kind::drawn},
    {"head_dim", Kind::count},
    {"head_dim_v", Kind::count},
    {"causal", Kind::flag},
    {"window", Kind::window},
    {"softmax_scale", Kind::scale},
    {"tokens", Kind::count},
    {"model_dim", Kind::count},
    {"dropout", Kind::probability},
    {"dropout_seed", Kind::seed},
    {"key_padding", Kind::padding},
    {"padded_fraction", Kind::fraction},
    {"valid_lengths", Kind::lengths},
    {"padding_seed", Kind::seed},
}};

// The suite's dtypes. fp64 rows run on the CPU variants (the GPU variants report them unsupported); their check
// adds the fp64 reference's own rounding to each bound.
constexpr std::array<DType, 5> kSuiteDTypes = {DType::fp64, DType::fp32, DType::fp16, DType::bf16, DType::fp8_e4m3};

// A varlen row's per-sequence lengths: a list from the file, or drawn from a `seqlens` table (`drawn` then holds the
// table as read, with its defaults, for messages). Two are the same value when their lengths are.
struct Lengths {
  std::vector<std::int64_t> lengths;
  std::string drawn;
  friend bool operator==(const Lengths& a, const Lengths& b) { return a.lengths == b.lengths; }
};

using Value = std::variant<std::string, Pass, DType, Distribution, std::int64_t, bool, Window, double, Lengths>;

// The values of one key: one when it stands in [fixed], the axis values when in [axes]; none when unset.
struct Values {
  std::vector<Value> values;
  bool axis = false;
  std::string path;                  // "fixed.heads" or "axes.heads", for messages
  const toml::node* node = nullptr;  // where it is set, for the line in messages
  [[nodiscard]] bool set() const { return !values.empty(); }
};

std::string_view type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::string value_text(const Value& value) {
  struct Visitor {
    std::string operator()(const std::string& v) const { return fmt::format("\"{}\"", v); }
    std::string operator()(Pass v) const { return std::string(name(v)); }
    std::string operator()(DType v) const { return std::string(name(v)); }
    std::string operator()(Distribution v) const { return std::string(name(v)); }
    std::string operator()(std::int64_t v) const { return std::to_string(v); }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(const Window& v) const { return fmt::format("[{}, {}]", v.left, v.right); }
    std::string operator()(double v) const { return fmt::format("{}", v); }
    std::string operator()(const Lengths& v) const {
      return v.drawn.empty() ? fmt::format("[{}]", fmt::join(v.lengths, ", ")) : v.drawn;
    }
  };
  return std::visit(Visitor{}, value);
}

// Messages are one line: a line break quoted from the file (a key or a string value) is written as \n.
std::string one_line(const std::string& message) {
  std::string line;
  for (char c : message) {
    if (c == '\n') {
      line += "\\n";
    } else if (c == '\r') {
      line += "\\r";
    } else {
      line += c;
    }
  }
  return line;
}

// ---- drawn varlen lengths (a `seqlens` table, experiments/README.md)
// Integer draws from std::mt19937_64's raw words only: the engine's output is fixed by the C++ standard, while
// std::uniform_int_distribution (and every floating-point distribution, and exp/log in the C library) differ between
// standard libraries, so a seed gives the same lengths on every machine.
enum class LengthDistribution { uniform, loguniform };

struct LengthDraw {
  std::int64_t tokens = 1;  // the budget the lengths fill exactly
  LengthDistribution distribution = LengthDistribution::uniform;
  std::uint64_t seed = 0;
  std::int64_t min = 1;
  std::int64_t max = 1;
};

// A varlen batch of more sequences than this is certainly a mistake (min = 0, max = 1 and a large budget).
constexpr std::size_t kMaxSequences = 1'000'000;
// The tokens of a batch stay within the element bound of Problem::validate (and exact in doubles).
constexpr std::int64_t kMaxTokens = std::int64_t{1} << 53;

// A uniform integer of [0, span), span >= 1: words below 2^64 mod span are drawn again, so that the words kept are
// a whole number of copies of [0, span) and every value is equally likely.
std::uint64_t uniform_below(std::mt19937_64& engine, std::uint64_t span) {
  const std::uint64_t reject_below = (0 - span) % span;  // 2^64 mod span
  for (;;) {
    const std::uint64_t word = engine();
    if (word >= reject_below) return word % span;
  }
}

// One length of [min, max]. uniform: every length equally likely. loguniform (Zipf-like, P(n) ~ 1/n): an octave
// [2^e, 2^(e+1)) of those meeting [max(min, 1), max] uniformly, zero as one more octave when min = 0, then a length
// uniformly within the octave (clipped to [min, max]): many short sequences and a few long ones, as in packed data.
std::int64_t draw_length(std::mt19937_64& engine, const LengthDraw& d) {
  if (d.distribution == LengthDistribution::uniform) {
    return d.min + static_cast<std::int64_t>(uniform_below(engine, static_cast<std::uint64_t>(d.max - d.min) + 1));
  }
  const std::int64_t low = std::max<std::int64_t>(d.min, 1);
  const int e_low = static_cast<int>(std::bit_width(static_cast<std::uint64_t>(low))) - 1;
  const int e_high = static_cast<int>(std::bit_width(static_cast<std::uint64_t>(d.max))) - 1;
  const auto octaves = static_cast<std::uint64_t>(e_high - e_low + 1);
  const std::uint64_t pick = uniform_below(engine, octaves + (d.min == 0 ? 1 : 0));
  if (pick == octaves) return 0;
  const int e = e_low + static_cast<int>(pick);
  const std::int64_t lo = std::max(low, std::int64_t{1} << e);
  const std::int64_t hi = std::min(d.max, static_cast<std::int64_t>((std::uint64_t{2} << e) - 1));
  return lo + static_cast<std::int64_t>(uniform_below(engine, static_cast<std::uint64_t>(hi - lo) + 1));
}

// Valid lengths of a batch of `batch` entries of `seqlen` tokens of which round(fraction B N) are padding, drawn with
// `seed`: the entries in a random order (Fisher-Yates), each taking a uniform share of the padding left, between what
// the entries after it cannot hold and what it can (at most N); the last takes the rest. Every entry may be anything
// from unpadded to empty, and the padded tokens add up exactly. Integer draws from std::mt19937_64 only (above).
std::vector<std::int64_t> draw_valid_lengths(std::int64_t batch, std::int64_t seqlen, double fraction,
                                             std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::vector<std::int64_t> order(static_cast<std::size_t>(std::max<std::int64_t>(batch, 0)));
  for (std::size_t b = 0; b < order.size(); ++b) order[b] = static_cast<std::int64_t>(b);
  for (std::size_t b = order.size(); b > 1; --b) std::swap(order[b - 1], order[uniform_below(engine, b)]);
  std::int64_t left = std::llround(fraction * static_cast<double>(batch) * static_cast<double>(seqlen));
  std::vector<std::int64_t> valid(order.size(), seqlen);
  for (std::size_t r = 0; r < order.size(); ++r) {
    const auto after = static_cast<std::int64_t>(order.size() - r - 1);
    const std::int64_t lo = std::max<std::int64_t>(0, left - after * seqlen), hi = std::min(seqlen, left);
    const std::int64_t padded =
        lo + static_cast<std::int64_t>(uniform_below(engine, static_cast<std::uint64_t>(hi - lo) + 1));
    valid[static_cast<std::size_t>(order[r])] = seqlen - padded;
    left -= padded;
  }
  return valid;
}

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  // "FILE: key 'K': problem (line L)"; the line is left out where toml++ knows none.
  [[noreturn]] void fail(std::string_view key, std::string_view problem, const toml::node* at = nullptr) const {
    std::string where;
    if (at != nullptr && at->source().begin.line > 0) where = fmt::format(" (line {})", at->source().begin.line);
    throw SuiteError(one_line(fmt::format("{}: key '{}': {}{}", file_, key, problem, where)));
  }

  Suite parse(const std::string& text) {
    toml::table root;
    try {
      root = toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      const auto& begin = e.source().begin;
      throw SuiteError(one_line(fmt::format("{}:{}:{}: {}", file_, begin.line, begin.column, e.description())));
    }
    Suite suite;
    for (auto&& [key, node] : root) {
      const std::string_view name = key.str();
      if (name == "sweep") {
        if (!node.is_array_of_tables()) {
          fail(name, fmt::format("must be an array of tables ([[sweep]]), found {}", type_name(node)), &node);
        }
        continue;
      }
      if (name != "suite" && name != "fixed" && name != "axes" && name != "random") {
        fail(name, "unknown table or key (a suite has the tables [suite], [fixed], [axes], [[sweep]] and [random])",
             &node);
      }
      if (!node.is_table()) fail(name, fmt::format("must be a table, found {}", type_name(node)), &node);
    }
    if (const toml::table* table = root["suite"].as_table()) parse_settings(*table, suite.settings);
    if (const toml::table* random = root["random"].as_table()) {
      for (const char* other : {"fixed", "axes", "sweep"}) {
        if (root.contains(other)) fail(other, "cannot be combined with [random] (its rows are drawn, not listed)", root.get(other));
      }
      suite.rows = draw_rows(*random);
      return suite;
    }
    std::array<Values, kFieldCount> fields;
    if (const toml::table* table = root["fixed"].as_table()) parse_keys(*table, "fixed", false, fields);
    if (const toml::table* table = root["axes"].as_table()) parse_keys(*table, "axes", true, fields);
    const toml::array* sweeps = root["sweep"].as_array();
    if (sweeps == nullptr) {
      check_combination(fields);
      suite.rows = expand(fields);
      return suite;
    }
    // Each [[sweep]] adds its own [fixed] and [axes] keys to the top-level ones; the rows are the sweeps'
    // cross-products one after another, numbered on.
    std::set<std::string> keys;
    for (std::size_t i = 0; i < sweeps->size(); ++i) {
      const toml::table& sweep = *sweeps->get(i)->as_table();
      const std::string section = fmt::format("sweep[{}]", i);
      std::array<Values, kFieldCount> own = fields;
      for (auto&& [key, node] : sweep) {
        const std::string_view name = key.str();
        if (name != "fixed" && name != "axes") {
          fail(fmt::format("{}.{}", section, name), "unknown key (a [[sweep]] has the tables fixed and axes)", &node);
        }
        if (!node.is_table()) fail(fmt::format("{}.{}", section, name), fmt::format("must be a table, found {}", type_name(node)), &node);
        parse_keys(*node.as_table(), fmt::format("{}.{}", section, name), name == "axes", own);
      }
      check_combination(own);
      for (RowSpec& row : expand(own)) {
        row.index = static_cast<std::int64_t>(suite.rows.size());
        if (!keys.insert(row.key()).second) {
          fail(section, fmt::format("repeats the row {} of an earlier sweep", row.key()), &sweep);
        }
        suite.rows.push_back(std::move(row));
        if (static_cast<std::int64_t>(suite.rows.size()) > kMaxRows) {
          fail(section, fmt::format("the sweeps have more than {} rows", kMaxRows));
        }
      }
    }
    return suite;
  }

 private:
  // ---- [suite]
  void parse_settings(const toml::table& table, SuiteSettings& settings) const {
    for (auto&& [key, node] : table) {
      const std::string path = fmt::format("suite.{}", key.str());
      const std::string_view name = key.str();
      if (name == "name") {
        settings.name = suite_name(path, node);
      } else if (name == "description") {
        settings.description = text(path, node, true);
      } else if (name == "seed") {
        settings.seed = static_cast<std::uint64_t>(integer(path, node, 0));
      } else if (name == "warmup") {
        settings.warmup = small_integer(path, node, 0);
      } else if (name == "repetitions") {
        settings.repetitions = small_integer(path, node, 1);
      } else if (name == "profile") {
        settings.profile = flag(path, node);
      } else if (name == "verify") {
        settings.verify = text(path, node, false);
        if (settings.verify != "all" && settings.verify != "none" && settings.verify != "auto") {
          fail(path, fmt::format("is \"{}\", must be one of \"all\", \"none\", \"auto\"", settings.verify), &node);
        }
      } else if (name == "verify_max_flops") {
        settings.verify_max_flops = number(path, node, false);
      } else if (name == "verify_heads") {
        settings.verify_heads = small_integer(path, node, 1);
      } else if (name == "verify_rows") {
        settings.verify_rows = small_integer(path, node, 1);
      } else if (name == "max_row_seconds") {
        settings.max_row_seconds = number(path, node, true);
      } else {
        fail(path,
             "unknown key in [suite] (expected name, description, seed, warmup, repetitions, profile, verify, "
             "verify_max_flops, verify_heads, verify_rows, max_row_seconds)",
             &node);
      }
    }
  }

  // The suite name names the results folder, so it must be one plain path component.
  std::string suite_name(const std::string& path, const toml::node& node) const {
    std::string value = text(path, node, false);
    for (char c : value) {
      const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                         c == '-' || c == '.';
      if (!plain) fail(path, fmt::format("\"{}\" may hold only letters, digits, '_', '-' and '.'", value), &node);
    }
    if (value == "." || value == "..") fail(path, fmt::format("\"{}\" is not a usable name", value), &node);
    return value;
  }

  // ---- scalar readers: each checks the TOML type exactly (no float for an integer, no string for a bool)
  std::string text(const std::string& path, const toml::node& node, bool allow_empty) const {
    const auto* value = node.as_string();
    if (value == nullptr) fail(path, fmt::format("must be a string, found {}", type_name(node)), &node);
    if (!allow_empty && value->get().empty()) fail(path, "must not be empty", &node);
    return value->get();
  }

  std::int64_t integer(const std::string& path, const toml::node& node, std::int64_t minimum) const {
    const auto* value = node.as_integer();
    if (value == nullptr) fail(path, fmt::format("must be an integer, found {}", type_name(node)), &node);
    if (value->get() < minimum) fail(path, fmt::format("is {}, must be >= {}", value->get(), minimum), &node);
    return value->get();
  }

  int small_integer(const std::string& path, const toml::node& node, std::int64_t minimum) const {
    const std::int64_t value = integer(path, node, minimum);
    if (value > std::numeric_limits<int>::max()) fail(path, fmt::format("is {}, too large", value), &node);
    return static_cast<int>(value);
  }

  bool flag(const std::string& path, const toml::node& node) const {
    const auto* value = node.as_boolean();
    if (value == nullptr) fail(path, fmt::format("must be true or false, found {}", type_name(node)), &node);
    return value->get();
  }

  // An integer or a float, finite; > 0 when `positive`, else >= 0.
  double number(const std::string& path, const toml::node& node, bool positive) const {
    double value = 0;
    if (const auto* i = node.as_integer()) {
      value = static_cast<double>(i->get());
    } else if (const auto* f = node.as_floating_point()) {
      value = f->get();
    } else {
      fail(path, fmt::format("must be a number, found {}", type_name(node)), &node);
    }
    if (!std::isfinite(value) || (positive ? !(value > 0) : !(value >= 0))) {
      fail(path, fmt::format("is {}, must be finite and {} 0", value, positive ? ">" : ">="), &node);
    }
    return value;
  }

  template <class Enum, std::size_t N>
  Enum choice(const std::string& path, const toml::node& node, Enum (*parse)(std::string_view),
              const std::array<Enum, N>& allowed) const {
    const std::string value = text(path, node, true);
    std::string names;
    for (Enum e : allowed) names += fmt::format("{}{}", names.empty() ? "" : ", ", name(e));
    try {
      const Enum parsed = parse(value);
      for (Enum e : allowed) {
        if (e == parsed) return parsed;
      }
    } catch (const std::invalid_argument&) {
    }
    fail(path, fmt::format("is \"{}\", must be one of {}", value, names), &node);
  }

  Window window(const std::string& path, const toml::node& node) const {
    const toml::array* pair = node.as_array();
    if (pair == nullptr || pair->size() != 2) {
      fail(path,
           fmt::format("must be a pair [left, right] of integers (-1 = unbounded), found {}",
                       pair == nullptr ? std::string(type_name(node)) : fmt::format("an array of {}", pair->size())),
           &node);
    }
    return {integer(path, (*pair)[0], -1), integer(path, (*pair)[1], -1)};
  }

  Value scalar(Kind kind, const std::string& path, const toml::node& node) const {
    switch (kind) {
      case Kind::text: return text(path, node, false);
      case Kind::pass: return choice(path, node, &parse_pass, std::array<Pass, 3>{Pass::fwd, Pass::bwd, Pass::fwdbwd});
      case Kind::dtype: return choice(path, node, &parse_dtype, kSuiteDTypes);
      case Kind::distribution:
        return choice(path, node, &parse_distribution, kDistributions);
      case Kind::count: return integer(path, node, 1);
      case Kind::flag: return flag(path, node);
      case Kind::window: return window(path, node);
      case Kind::scale: return number(path, node, true);
      case Kind::probability: {
        const double p = number(path, node, false);
        if (!(p < 1)) fail(path, fmt::format("is {}, must be in [0, 1) (the probability of dropping a weight)", p), &node);
        return p;
      }
      case Kind::lengths: return length_list(path, node);
      case Kind::drawn: return drawn_lengths(path, node);
      case Kind::padding: return padding_side(path, node);
      case Kind::fraction: {
        const double value = number(path, node, false);
        if (value > 1) {
          fail(path, fmt::format("is {}, must be in [0, 1] (the share of the batch's tokens padded)", value), &node);
        }
        return value;
      }
      case Kind::seed: return integer(path, node, 0);
    }
    fail(path, "unhandled kind");
  }

  // key_padding: "right" or "left", the sides whose valid tokens are one interval of each batch entry (what the
  // problem's mask rule and the varlen form of the fused kernels take).
  std::string padding_side(const std::string& path, const toml::node& node) const {
    const std::string value = text(path, node, true);
    if (value != "right" && value != "left") {
      fail(path,
           fmt::format("is \"{}\", must be \"right\" or \"left\" (a key-padding mask whose valid keys are one interval "
                       "per batch entry; other masks are not supported)",
                       value),
           &node);
    }
    return value;
  }

  // seqlens_q, seqlens_k, valid_lengths: one batch, a length >= 0 per sequence.
  Lengths length_list(const std::string& path, const toml::node& node) const {
    const toml::array* list = node.as_array();
    if (list == nullptr) {
      fail(path, fmt::format("must be a list of sequence lengths (integers >= 0), found {}", type_name(node)), &node);
    }
    if (list->empty()) fail(path, "must not be empty (a length per sequence of the batch)", &node);
    Lengths out;
    std::int64_t total = 0;
    for (std::size_t i = 0; i < list->size(); ++i) {
      const std::string element = fmt::format("{}[{}]", path, i);
      const std::int64_t length = integer(element, (*list)[i], 0);
      if (length > kMaxTokens - total) {
        fail(path, fmt::format("the lengths add up to more than {} tokens", kMaxTokens), &node);
      }
      total += length;
      out.lengths.push_back(length);
    }
    if (out.lengths.size() > kMaxSequences) fail(path, fmt::format("has more than {} sequences", kMaxSequences), &node);
    return out;
  }

  // seqlens: {tokens = T, distribution = "uniform" | "loguniform", seed = S, min = A, max = B}: lengths of [A, B]
  // drawn until they fill T tokens, the last cut to what is left.
  Lengths drawn_lengths(const std::string& path, const toml::node& node) const {
    static constexpr std::array<std::string_view, 5> kDrawKeys = {"tokens", "distribution", "seed", "min", "max"};
    const toml::table* table = node.as_table();
    if (table == nullptr) {
      fail(path,
           fmt::format(
               "must be a table {{tokens = T, distribution = \"uniform\", seed = S, min = A, max = B}}, found {}",
               type_name(node)),
           &node);
    }
    for (auto&& [key, value] : *table) {
      if (std::find(kDrawKeys.begin(), kDrawKeys.end(), key.str()) == kDrawKeys.end()) {
        fail(fmt::format("{}.{}", path, key.str()),
             fmt::format("unknown field of a seqlens table (expected {})", fmt::join(kDrawKeys, ", ")), &value);
      }
    }
    const toml::node* tokens = table->get("tokens");
    if (tokens == nullptr) {
      fail(path + ".tokens", "missing: a seqlens table needs tokens (the batch's token budget)", &node);
    }
    LengthDraw d;
    d.tokens = integer(path + ".tokens", *tokens, 1);
    if (d.tokens > kMaxTokens) fail(path + ".tokens", fmt::format("is {}, at most {}", d.tokens, kMaxTokens), tokens);
    std::string distribution = "uniform";
    if (const toml::node* value = table->get("distribution")) {
      distribution = text(path + ".distribution", *value, false);
      if (distribution == "loguniform") {
        d.distribution = LengthDistribution::loguniform;
      } else if (distribution != "uniform") {
        fail(path + ".distribution", fmt::format("is \"{}\", must be one of \"uniform\", \"loguniform\"", distribution),
             value);
      }
    }
    if (const toml::node* value = table->get("seed")) {
      d.seed = static_cast<std::uint64_t>(integer(path + ".seed", *value, 0));
    }
    if (const toml::node* value = table->get("min")) d.min = integer(path + ".min", *value, 0);
    d.max = d.tokens;
    if (const toml::node* value = table->get("max")) d.max = integer(path + ".max", *value, 1);
    if (d.min > d.max) {
      fail(
          path,
          fmt::format("min = {} > max = {}{}", d.min, d.max, table->contains("max") ? "" : " (max defaults to tokens)"),
          &node);
    }
    Lengths out;
    out.drawn = fmt::format("{{tokens = {}, distribution = \"{}\", seed = {}, min = {}, max = {}}}", d.tokens,
                            distribution, d.seed, d.min, d.max);
    std::mt19937_64 engine(d.seed);
    for (std::int64_t left = d.tokens; left > 0;) {
      const std::int64_t length = std::min(draw_length(engine, d), left);
      out.lengths.push_back(length);
      left -= length;
      if (out.lengths.size() > kMaxSequences) {
        fail(path,
             fmt::format("draws more than {} sequences before filling {} tokens; raise min", kMaxSequences, d.tokens),
             &node);
      }
    }
    return out;
  }

  // {from = A, to = B}: the powers of two A, 2A, ..., B.
  std::vector<Value> power_of_two_range(const std::string& path, const toml::table& range) const {
    for (auto&& [key, node] : range) {
      if (key.str() != "from" && key.str() != "to") {
        fail(fmt::format("{}.{}", path, key.str()), "unknown key in a range (a range is {from = A, to = B})", &node);
      }
    }
    std::array<std::int64_t, 2> ends{};
    std::size_t i = 0;
    for (const char* end : {"from", "to"}) {
      const toml::node* node = range.get(end);
      const std::string end_path = fmt::format("{}.{}", path, end);
      if (node == nullptr) fail(end_path, "missing (a range is {from = A, to = B}, both powers of two)", &range);
      ends[i] = integer(end_path, *node, 1);
      if ((ends[i] & (ends[i] - 1)) != 0) fail(end_path, fmt::format("is {}, not a power of two", ends[i]), node);
      ++i;
    }
    if (ends[0] > ends[1]) {
      fail(path, fmt::format("range is reversed: from = {} > to = {}", ends[0], ends[1]), &range);
    }
    std::vector<Value> values;
    for (std::int64_t v = ends[0];; v *= 2) {
      values.emplace_back(v);
      if (v == ends[1]) break;
    }
    return values;
  }

  std::vector<Value> axis_values(Kind kind, const std::string& path, const toml::node& node) const {
    if (kind == Kind::count) {
      if (const toml::table* range = node.as_table()) return power_of_two_range(path, *range);
    }
    const toml::array* list = node.as_array();
    if (list == nullptr) {
      fail(path,
           fmt::format("an axis must be a list{}, found {}", kind == Kind::count ? " or a range {from, to}" : "",
                       type_name(node)),
           &node);
    }
    if (list->empty()) fail(path, "an axis must not be empty", &node);
    if (kind == Kind::lengths && !list->front().is_array()) {
      fail(path, "an axis of lengths is a list of lists, one per varlen batch (in [fixed]: a single list)", &node);
    }
    std::vector<Value> values;
    for (std::size_t i = 0; i < list->size(); ++i) {
      const std::string element = fmt::format("{}[{}]", path, i);
      values.push_back(scalar(kind, element, (*list)[i]));
      for (std::size_t j = 0; j < i; ++j) {
        if (values[j] == values[i]) {
          fail(element, fmt::format("{} is listed twice (also at [{}])", value_text(values[i]), j), &(*list)[i]);
        }
      }
    }
    return values;
  }

  // ---- [fixed] and [axes]
  void parse_keys(const toml::table& table, std::string_view section, bool axis,
                  std::array<Values, kFieldCount>& fields) const {
    for (auto&& [key, node] : table) {
      const std::string path = fmt::format("{}.{}", section, key.str());
      int field = -1;
      for (int f = 0; f < kFieldCount; ++f) {
        if (kFields[f].name == key.str()) field = f;
      }
      if (field < 0) {
        std::string names;
        for (const FieldSpec& spec : kFields) names += fmt::format("{}{}", names.empty() ? "" : ", ", spec.name);
        fail(path, fmt::format("unknown key in [{}] (expected one of {})", section, names), &node);
      }
      Values& values = fields[field];
      if (values.set()) {
        fail(path, fmt::format("already set as '{}': a key is either fixed or an axis", values.path), &node);
      }
      values.path = path;
      values.node = &node;
      values.axis = axis;
      if (axis) {
        values.values = axis_values(kFields[field].kind, path, node);
      } else {
        values.values.push_back(scalar(kFields[field].kind, path, node));
      }
    }
  }

  // Keys that exclude or need one another, and the divisions `tokens` and `model_dim` imply.
  void check_combination(const std::array<Values, kFieldCount>& fields) const {
    auto exclusive = [&](Field a, Field b, std::string_view why) {
      if (fields[a].set() && fields[b].set()) {
        fail(fields[a].path, fmt::format("cannot be set together with '{}' ({})", fields[b].path, why), fields[a].node);
      }
    };
    exclusive(kTokens, kBatch, "batch = tokens / seqlen_q");
    exclusive(kModelDim, kHeads, "heads = model_dim / head_dim");
    exclusive(kSeqlen, kSeqlenQ, "seqlen sets both seqlen_q and seqlen_k");
    exclusive(kSeqlen, kSeqlenK, "seqlen sets both seqlen_q and seqlen_k");
    // Varlen rows: the lengths set the batch size and every sequence's N_q and N_k.
    exclusive(kSeqlens, kSeqlensQ, "seqlens draws the lengths that seqlens_q lists");
    exclusive(kSeqlens, kSeqlensK, "seqlens draws N_k = N_q per sequence");
    if (fields[kSeqlensK].set() && !fields[kSeqlensQ].set()) {
      fail(fields[kSeqlensK].path, "needs seqlens_q (seqlens_k only sets different key lengths)",
           fields[kSeqlensK].node);
    }
    for (const Field varlen : {kSeqlensQ, kSeqlensK, kSeqlens}) {
      for (const Field dense : {kBatch, kSeqlen, kSeqlenQ, kSeqlenK, kTokens}) {
        exclusive(varlen, dense, "a varlen row's batch size and lengths come from its per-sequence lengths");
      }
    }
    if (fields[kSeqlensK].set()) {
      for (std::size_t i = 0; i < fields[kSeqlensQ].values.size(); ++i) {
        for (std::size_t j = 0; j < fields[kSeqlensK].values.size(); ++j) {
          const std::size_t q = std::get<Lengths>(fields[kSeqlensQ].values[i]).lengths.size();
          const std::size_t k = std::get<Lengths>(fields[kSeqlensK].values[j]).lengths.size();
          if (q == k) continue;
          auto element = [](const Values& v, std::size_t at) {
            return v.axis ? fmt::format("{}[{}]", v.path, at) : v.path;
          };
          fail(element(fields[kSeqlensK], j),
               fmt::format("has {} lengths, '{}' has {}: both give one length per sequence", k,
                           element(fields[kSeqlensQ], i), q),
               fields[kSeqlensK].node);
        }
      }
    }
    check_key_padding(fields);
    if (!fields[kVariant].set()) fail("variant", "missing: every row needs a variant (in [fixed] or [axes])");
    if (fields[kSeqlenQ].set() != fields[kSeqlenK].set()) {
      const Field given = fields[kSeqlenQ].set() ? kSeqlenQ : kSeqlenK;
      fail(fields[given].path, "needs both seqlen_q and seqlen_k (or seqlen for N_q = N_k)", fields[given].node);
    }
    if (!fields[kSeqlen].set() && !fields[kSeqlenQ].set() && !fields[kSeqlensQ].set() && !fields[kSeqlens].set()) {
      fail("seqlen",
           "missing: set seqlen (or seqlen_q and seqlen_k, or varlen seqlens_q or seqlens) in [fixed] or [axes]");
    }
    auto divides = [&](Field whole, Field part, std::int64_t part_default) {
      if (!fields[whole].set()) return;
      const std::vector<Value> defaults{Value{part_default}};
      const std::vector<Value>& parts = fields[part].set() ? fields[part].values : defaults;
      for (const Value& w : fields[whole].values) {
        for (const Value& p : parts) {
          const auto total = std::get<std::int64_t>(w);
          const auto piece = std::get<std::int64_t>(p);
          if (total % piece != 0) {
            fail(fields[whole].path,
                 fmt::format("{} = {} is not a multiple of {} = {}", kFields[whole].name, total, kFields[part].name,
                             piece),
                 fields[whole].node);
          }
        }
      }
    };
    divides(kTokens, fields[kSeqlen].set() ? kSeqlen : kSeqlenQ, 1);
    divides(kModelDim, kHeadDim, Problem{}.head_dim);
  }

  // key_padding and the keys that give its lengths: padded_fraction (with padding_seed) or valid_lengths.
  void check_key_padding(const std::array<Values, kFieldCount>& fields) const {
    auto exclusive = [&](Field a, Field b, std::string_view why) {
      if (fields[a].set() && fields[b].set()) {
        fail(fields[a].path, fmt::format("cannot be set together with '{}' ({})", fields[b].path, why), fields[a].node);
      }
    };
    for (const Field needs : {kPaddedFraction, kValidLengths, kPaddingSeed}) {
      if (fields[needs].set() && !fields[kKeyPadding].set()) {
        fail(fields[needs].path, "needs key_padding (\"right\" or \"left\")", fields[needs].node);
      }
    }
    if (!fields[kKeyPadding].set()) return;
    const Values& padding = fields[kKeyPadding];
    exclusive(kPaddedFraction, kValidLengths, "the valid lengths are drawn or listed, not both");
    if (!fields[kPaddedFraction].set() && !fields[kValidLengths].set()) {
      fail(padding.path, "needs padded_fraction (lengths drawn with padding_seed) or valid_lengths (listed)",
           padding.node);
    }
    if (fields[kPaddingSeed].set() && !fields[kPaddedFraction].set()) {
      fail(fields[kPaddingSeed].path, "needs padded_fraction (the seed draws the valid lengths it implies)",
           fields[kPaddingSeed].node);
    }
    for (const Field varlen : {kSeqlensQ, kSeqlensK, kSeqlens}) {
      exclusive(kKeyPadding, varlen, "a varlen batch is already unpadded");
    }
    for (const Field lengths : {kSeqlenQ, kSeqlenK}) {
      exclusive(kKeyPadding, lengths, "the queries are padded with the keys, as in self-attention: set seqlen");
    }
    exclusive(kValidLengths, kBatch, "the batch size is the number of valid lengths");
    exclusive(kValidLengths, kTokens, "the batch size is the number of valid lengths");
    if (!fields[kValidLengths].set() || !fields[kSeqlen].set()) return;
    for (std::size_t i = 0; i < fields[kValidLengths].values.size(); ++i) {
      for (const Value& n : fields[kSeqlen].values) {
        const std::int64_t seqlen = std::get<std::int64_t>(n);
        for (const std::int64_t valid : std::get<Lengths>(fields[kValidLengths].values[i]).lengths) {
          if (valid <= seqlen) continue;
          const Values& v = fields[kValidLengths];
          fail(v.axis ? fmt::format("{}[{}]", v.path, i) : v.path,
               fmt::format("holds {}, more than seqlen = {} (a batch entry has at most seqlen valid tokens)", valid,
                           seqlen),
               v.node);
        }
      }
    }
  }

  // ---- expansion
  std::vector<RowSpec> expand(const std::array<Values, kFieldCount>& fields) const {
    std::int64_t total = 1;
    for (const Values& values : fields) {
      if (!values.axis) continue;
      total *= static_cast<std::int64_t>(values.values.size());
      if (total > kMaxRows) {
        fail("axes", fmt::format("the cross-product has more than {} rows", kMaxRows));
      }
    }
    std::vector<RowSpec> rows;
    rows.reserve(static_cast<std::size_t>(total));
    std::array<std::size_t, kFieldCount> pick{};
    for (std::int64_t index = 0; index < total; ++index) {
      std::int64_t rest = index;  // mixed radix, the last axis fastest
      for (int f = kFieldCount - 1; f >= 0; --f) {
        if (!fields[f].axis) continue;
        const auto size = static_cast<std::int64_t>(fields[f].values.size());
        pick[f] = static_cast<std::size_t>(rest % size);
        rest /= size;
      }
      rows.push_back(make_row(fields, pick, index));
    }
    return rows;
  }

  // ---- [random]: problems drawn with a seed (experiments/README.md)
  struct IntegerRange {
    std::int64_t from, to;
  };
  IntegerRange integer_range(const std::string& path, const toml::node& node, std::int64_t minimum) const {
    const toml::table* range = node.as_table();
    if (range == nullptr) fail(path, fmt::format("must be a range {{from = A, to = B}}, found {}", type_name(node)), &node);
    for (auto&& [key, value] : *range) {
      if (key.str() != "from" && key.str() != "to") {
        fail(fmt::format("{}.{}", path, key.str()), "unknown key in a range (a range is {from = A, to = B})", &value);
      }
    }
    for (const char* end : {"from", "to"}) {
      if (!range->contains(end)) fail(fmt::format("{}.{}", path, end), "missing (a range is {from = A, to = B})", &node);
    }
    const IntegerRange r{integer(path + ".from", *range->get("from"), minimum), integer(path + ".to", *range->get("to"), minimum)};
    if (r.from > r.to) fail(path, fmt::format("range is reversed: from = {} > to = {}", r.from, r.to), &node);
    return r;
  }

  std::vector<RowSpec> draw_rows(const toml::table& table) const {
    static constexpr std::array<std::string_view, 14> kKeys = {
        "rows", "seed", "variant", "pass", "dtype", "distribution", "head_dim", "seqlen_q", "seqlen_k", "batch",
        "heads_kv", "group", "mask", "window"};
    for (auto&& [key, node] : table) {
      if (std::find(kKeys.begin(), kKeys.end(), key.str()) == kKeys.end()) {
        fail(fmt::format("random.{}", key.str()),
             fmt::format("unknown key in [random] (expected {})", fmt::join(kKeys, ", ")), &node);
      }
    }
    auto required = [&](const char* key) -> const toml::node& {
      const toml::node* node = table.get(key);
      if (node == nullptr) fail(fmt::format("random.{}", key), "missing: [random] needs rows, variant, head_dim, seqlen_q and seqlen_k");
      return *node;
    };
    const std::int64_t count = integer("random.rows", required("rows"), 1);
    if (count > kMaxRows) fail("random.rows", fmt::format("is {}, at most {}", count, kMaxRows), &required("rows"));
    const std::uint64_t seed = table.contains("seed") ? static_cast<std::uint64_t>(integer("random.seed", *table.get("seed"), 0)) : 0;
    auto list = [&](const char* key, Kind kind, std::vector<Value> fallback) {
      const toml::node* node = table.get(key);
      return node ? axis_values(kind, fmt::format("random.{}", key), *node) : fallback;
    };
    const std::vector<Value> variants = list("variant", Kind::text, {});
    if (variants.empty()) required("variant");
    const std::vector<Value> passes = list("pass", Kind::pass, {Value{Pass::fwd}});
    const std::vector<Value> dtypes = list("dtype", Kind::dtype, {Value{DType::fp16}});
    const std::vector<Value> distributions = list("distribution", Kind::distribution, {Value{Distribution::normal}});
    const std::vector<Value> head_dims = list("head_dim", Kind::count, {});
    if (head_dims.empty()) required("head_dim");
    const std::vector<Value> batches = list("batch", Kind::count, {Value{std::int64_t{1}}});
    const std::vector<Value> heads_kv = list("heads_kv", Kind::count, {Value{std::int64_t{1}}});
    const std::vector<Value> groups = list("group", Kind::count, {Value{std::int64_t{1}}});
    const std::vector<Value> masks = list("mask", Kind::text, {Value{std::string("none")}});
    for (std::size_t i = 0; i < masks.size(); ++i) {
      const std::string& m = std::get<std::string>(masks[i]);
      if (m != "none" && m != "causal" && m != "window" && m != "causal_window") {
        fail(fmt::format("random.mask[{}]", i), fmt::format("is \"{}\", must be one of none, causal, window, causal_window", m),
             table.get("mask"));
      }
    }
    const IntegerRange seqlen_q = integer_range("random.seqlen_q", required("seqlen_q"), 1);
    const IntegerRange seqlen_k = integer_range("random.seqlen_k", required("seqlen_k"), 1);
    const IntegerRange window = table.contains("window") ? integer_range("random.window", *table.get("window"), 0)
                                                         : IntegerRange{0, 256};

    // Draws: Philox words of counter (row, attempt, draw), so a row's problem depends only on the seed and its index.
    std::vector<RowSpec> rows;
    std::set<std::string> keys;
    for (std::int64_t index = 0; index < count; ++index) {
      for (std::uint32_t attempt = 0;; ++attempt) {
        std::uint32_t draw = 0;
        auto word = [&]() {
          const Philox4x32 r = philox4x32_10({{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                                                attempt, draw++}},
                                               static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
          return (static_cast<std::uint64_t>(r.x[0]) << 32) | r.x[1];
        };
        auto pick = [&](const std::vector<Value>& values) { return values[word() % values.size()]; };
        // an integer of [from, to] with its binary exponent uniform, then uniform within: awkward sizes at every scale
        auto spread = [&](const IntegerRange& r) {
          if (r.from == r.to) return r.from;
          const std::int64_t low = std::max<std::int64_t>(r.from, 1);
          int e_low = 0, e_high = 0;
          while ((std::int64_t{2} << e_low) <= low) ++e_low;
          while ((std::int64_t{2} << e_high) <= r.to) ++e_high;
          const int e = e_low + static_cast<int>(word() % static_cast<std::uint64_t>(e_high - e_low + 1));
          const std::int64_t lo = std::max(low, std::int64_t{1} << e);
          const std::int64_t hi = std::min(r.to, (std::int64_t{2} << e) - 1);
          const std::int64_t value = lo + static_cast<std::int64_t>(word() % static_cast<std::uint64_t>(hi - lo + 1));
          return r.from == 0 && word() % 8 == 0 ? std::int64_t{0} : value;
        };
        RowSpec row;
        row.index = index;
        row.variant = std::get<std::string>(pick(variants));
        row.pass = std::get<Pass>(pick(passes));
        row.dtype = std::get<DType>(pick(dtypes));
        row.distribution = std::get<Distribution>(pick(distributions));
        Problem& p = row.problem;
        p.head_dim = std::get<std::int64_t>(pick(head_dims));
        p.batch = std::get<std::int64_t>(pick(batches));
        p.heads_kv = std::get<std::int64_t>(pick(heads_kv));
        p.heads = p.heads_kv * std::get<std::int64_t>(pick(groups));
        p.seqlen_q = spread(seqlen_q);
        p.seqlen_k = spread(seqlen_k);
        const std::string mask = std::get<std::string>(pick(masks));
        p.causal = mask == "causal" || mask == "causal_window";
        if (mask == "window" || mask == "causal_window") {
          p.window.left = spread(window);
          p.window.right = mask == "causal_window" ? 0 : spread(window);
        }
        if (keys.insert(row.key()).second) {
          rows.push_back(std::move(row));
          break;
        }
        if (attempt == 64) fail("random", fmt::format("row {}: 64 draws repeated earlier rows; widen the ranges", index));
      }
    }
    return rows;
  }

  static RowSpec make_row(const std::array<Values, kFieldCount>& fields,
                          const std::array<std::size_t, kFieldCount>& pick, std::int64_t index) {
    auto has = [&](Field f) { return fields[f].set(); };
    auto get = [&]<class T>(Field f, T fallback) { return has(f) ? std::get<T>(fields[f].values[pick[f]]) : fallback; };
    RowSpec row;
    row.index = index;
    row.variant = get(kVariant, std::string());
    row.pass = get(kPass, row.pass);
    row.dtype = get(kDType, row.dtype);
    row.distribution = get(kDistribution, row.distribution);
    Problem& p = row.problem;
    const std::int64_t head_dim = get(kHeadDim, p.head_dim);
    const std::int64_t heads = has(kModelDim) ? get(kModelDim, std::int64_t{1}) / head_dim : get(kHeads, p.heads);
    const std::int64_t heads_kv = get(kHeadsKv, heads);
    if (has(kSeqlens) || has(kSeqlensQ)) {
      const Lengths q = get(has(kSeqlens) ? kSeqlens : kSeqlensQ, Lengths{});
      p = Problem::varlen(heads, heads_kv, head_dim, q.lengths, get(kSeqlensK, q).lengths);
    } else {
      if (has(kSeqlen)) {
        p.seqlen_q = p.seqlen_k = get(kSeqlen, std::int64_t{1});
      } else {
        p.seqlen_q = get(kSeqlenQ, p.seqlen_q);
        p.seqlen_k = get(kSeqlenK, p.seqlen_k);
      }
      p.batch = has(kTokens) ? get(kTokens, std::int64_t{1}) / p.seqlen_q : get(kBatch, p.batch);
      p.heads = heads;
      p.heads_kv = heads_kv;
      p.head_dim = head_dim;
    }
    p.head_dim_v = get(kHeadDimV, std::int64_t{0});
    p.causal = get(kCausal, false);
    p.window = get(kWindow, Window{});
    if (has(kSoftmaxScale)) p.softmax_scale = get(kSoftmaxScale, 0.0);
    p.dropout.p = get(kDropout, 0.0);
    p.dropout.seed = static_cast<std::uint64_t>(get(kDropoutSeed, std::int64_t{0}));
    if (has(kKeyPadding)) {
      p.key_padding = get(kKeyPadding, std::string()) == "left" ? KeyPadding::left : KeyPadding::right;
      if (has(kValidLengths)) {
        p.valid_lengths = get(kValidLengths, Lengths{}).lengths;
        p.batch = static_cast<std::int64_t>(p.valid_lengths.size());
      } else {
        p.valid_lengths = draw_valid_lengths(p.batch, p.seqlen_k, get(kPaddedFraction, 0.0),
                                             static_cast<std::uint64_t>(get(kPaddingSeed, std::int64_t{0})));
      }
    }
    return row;
  }

  std::string file_;
};

std::string trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t");
  return std::string(text.substr(first, last - first + 1));
}

// A whole decimal number of digits only (no sign, no spaces), or nothing.
std::optional<std::int64_t> parse_natural(std::string_view text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

std::string RowSpec::key() const {
  const Problem& p = problem;
  std::string key = fmt::format(
      "variant={}|pass={}|dtype={}|dist={}|B={}|H={}|Hkv={}|Nq={}|Nk={}|d={}|dv={}|causal={}|window={},{}|scale={}",
      variant, name(pass), name(dtype), name(distribution), p.batch, p.heads, p.heads_kv, p.seqlen_q, p.seqlen_k,
      p.head_dim, p.dv(), p.causal ? 1 : 0, p.window.left, p.window.right,
      p.softmax_scale ? fmt::format("{}", *p.softmax_scale) : std::string("default"));
  if (p.dropout.active()) key += fmt::format("|dropout={}|dropout_seed={}", p.dropout.p, p.dropout.seed);
  if (p.is_varlen()) {
    key += fmt::format("|cu_q={}|cu_k={}", fmt::join(p.cu_seqlens_q, ","), fmt::join(p.cu_seqlens_k, ","));
  }
  if (p.is_padded()) key += fmt::format("|pad={}:{}", name(p.key_padding), fmt::join(p.valid_lengths, ","));
  return key;
}

Suite parse_suite(const std::string& text, const std::string& file_name) {
  Suite suite = Parser(file_name).parse(text);
  suite.path = file_name;
  suite.text_hash = fnv1a_hex(text);
  if (suite.settings.name.empty()) suite.settings.name = std::filesystem::path(file_name).stem().string();
  return suite;
}

Suite load_suite(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SuiteError(fmt::format("{}: cannot open the suite file", path.string()));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw SuiteError(fmt::format("{}: cannot read the suite file", path.string()));
  Suite suite = parse_suite(text, path.string());
  suite.path = path;
  return suite;
}

std::vector<RowSpec> filter_rows(const std::vector<RowSpec>& rows, const std::string& filter) {
  using Test = std::function<bool(const RowSpec&)>;
  // terms of one key are alternatives (any may hold), different keys must all hold
  std::map<std::string, std::vector<Test>> by_key;
  std::string_view rest = filter;
  while (!trim(rest).empty()) {
    const auto comma = rest.find(',');
    const std::string term = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const auto equals = term.find('=');
    if (equals == std::string::npos) {
      throw SuiteError(fmt::format("filter '{}': term '{}' is not key=value", filter, term));
    }
    const std::string key = trim(std::string_view(term).substr(0, equals));
    const std::string value = trim(std::string_view(term).substr(equals + 1));
    auto bad = [&](std::string_view problem) {
      return SuiteError(fmt::format("filter '{}': key '{}': {}", filter, key, problem));
    };
    if (value.empty()) throw bad("has no value");
    std::vector<Test>& tests = by_key[key == "seqlen" ? "seqlen_q" : key];
    auto enum_test = [&]<class Enum>(Enum (*parse)(std::string_view), auto member) -> Test {
      try {
        const Enum wanted = parse(value);
        return [wanted, member](const RowSpec& r) { return r.*member == wanted; };
      } catch (const std::invalid_argument& e) {
        throw bad(e.what());
      }
    };
    auto int_test = [&](std::int64_t Problem::*member) -> Test {
      const auto wanted = parse_natural(value);
      if (!wanted) throw bad(fmt::format("'{}' is not a whole number", value));
      return [wanted = *wanted, member](const RowSpec& r) { return r.problem.*member == wanted; };
    };
    if (key == "variant") {
      tests.emplace_back([value](const RowSpec& r) { return r.variant == value; });
    } else if (key == "pass") {
      tests.push_back(enum_test(&parse_pass, &RowSpec::pass));
    } else if (key == "dtype") {
      tests.push_back(enum_test(&parse_dtype, &RowSpec::dtype));
    } else if (key == "distribution") {
      tests.push_back(enum_test(&parse_distribution, &RowSpec::distribution));
    } else if (key == "batch") {
      tests.push_back(int_test(&Problem::batch));
    } else if (key == "heads") {
      tests.push_back(int_test(&Problem::heads));
    } else if (key == "heads_kv") {
      tests.push_back(int_test(&Problem::heads_kv));
    } else if (key == "seqlen" || key == "seqlen_q") {
      tests.push_back(int_test(&Problem::seqlen_q));
    } else if (key == "seqlen_k") {
      tests.push_back(int_test(&Problem::seqlen_k));
    } else if (key == "head_dim") {
      tests.push_back(int_test(&Problem::head_dim));
    } else if (key == "causal") {
      if (value != "true" && value != "false" && value != "1" && value != "0") {
        throw bad(fmt::format("'{}' is not true, false, 1 or 0", value));
      }
      const bool wanted = value == "true" || value == "1";
      tests.emplace_back([wanted](const RowSpec& r) { return r.problem.causal == wanted; });
    } else if (key == "key_padding") {
      if (value != "none" && value != "right" && value != "left") {
        throw bad(fmt::format("'{}' is not none, right or left", value));
      }
      tests.emplace_back([value](const RowSpec& r) { return name(r.problem.key_padding) == value; });
    } else if (key == "dropout") {  // the suite's value exactly: "0.1" parses to the same double as the TOML's 0.1
      double wanted = 0;
      const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), wanted);
      if (error != std::errc() || end != value.data() + value.size() || !(wanted >= 0 && wanted < 1)) {
        throw bad(fmt::format("'{}' is not a probability in [0, 1)", value));
      }
      tests.emplace_back([wanted](const RowSpec& r) { return r.problem.dropout.p == wanted; });
    } else {
      throw bad(
          "unknown (expected variant, pass, dtype, distribution, batch, heads, heads_kv, seqlen, seqlen_q, "
          "seqlen_k, head_dim, causal, key_padding, dropout)");
    }
  }
  std::vector<RowSpec> kept;
  for (const RowSpec& row : rows) {
    bool all = true;
    for (const auto& [key, alternatives] : by_key) {
      all = all && std::any_of(alternatives.begin(), alternatives.end(), [&](const Test& test) { return test(row); });
    }
    if (all) kept.push_back(row);
  }
  return kept;
}

std::vector<RowSpec> shard_rows(const std::vector<RowSpec>& rows, const std::string& shard) {
  const auto slash = shard.find('/');
  const std::string_view text = shard;
  const auto i = slash == std::string::npos ? std::nullopt : parse_natural(text.substr(0, slash));
  const auto n = slash == std::string::npos ? std::nullopt : parse_natural(text.substr(slash + 1));
  if (!i || !n) throw SuiteError(fmt::format("shard '{}': must be i/n with whole numbers 0 <= i < n", shard));
  if (*n < 1 || *i >= *n) throw SuiteError(fmt::format("shard '{}': needs 0 <= i < n", shard));
  std::vector<RowSpec> kept;
  for (const RowSpec& row : rows) {
    if (row.index % *n == *i) kept.push_back(row);
  }
  return kept;
}

}  // namespace flashlab::harness
