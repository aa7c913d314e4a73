// Suites are data (STYLE.md 8): a TOML file of fixed values and named axes whose cross-product is the list of
// rows to run. The format is documented in experiments/README.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/problem.hpp"

namespace flashlab::harness {

// A malformed suite: the message is one line naming the file, the key and the problem.
class SuiteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Run settings of a suite ([suite] table).
struct SuiteSettings {
  std::string name;         // default: the file's stem
  std::string description;
  std::uint64_t seed = 0;
  int warmup = 3;           // untimed repetitions before timing
  int repetitions = 10;     // timed cold repetitions
  bool profile = true;      // HBM traffic pass (CUPTI) for GPU rows
  // Verification (verify.hpp): "all" entries, "none", or "auto": all entries while the check's cost (the fp64
  // reference, the fp32 upcast and the bounds) stays under verify_max_flops, else `verify_heads` (sequence, kv head)
  // groups drawn at random and, in each, `verify_rows` query and key rows drawn at random (plus the first and last).
  std::string verify = "auto";
  double verify_max_flops = 2e10;
  int verify_heads = 3;
  int verify_rows = 64;
  // A row whose estimated cost (cost.hpp) exceeds this many seconds is recorded as `skipped` with the estimate,
  // not run; 0: no limit.
  double max_row_seconds = 0;
};

// One expanded row: what to run. Its key() identifies it in results.csv (resume) and is stable across runs.
struct RowSpec {
  std::int64_t index = 0;  // position in the full expansion (before --filter and --shard)
  std::string variant;
  Pass pass = Pass::fwd;
  DType dtype = DType::fp16;
  Distribution distribution = Distribution::normal;
  Problem problem;  // varlen (Problem::varlen) for rows of seqlens_q / seqlens_k or drawn seqlens
  // A key-padding row run as its unpadded varlen form (runner.cpp): `problem` is then Problem::unpadded() of the
  // suite's row and each packed token is drawn as this token of the padded tensors (Problem::padded_tokens); empty
  // for every row as the suite expands it.
  std::vector<std::int64_t> token_source{};
  [[nodiscard]] std::string key() const;
};

struct Suite {
  std::filesystem::path path;
  std::string text_hash;  // FNV-1a 64 of the file bytes, 16 hex digits
  SuiteSettings settings;
  std::vector<RowSpec> rows;  // the cross-product in canonical order
};

// Parses and expands; throws SuiteError. Does not consult the registry (unknown variants are left to the
// runner, which records them as `unsupported` rows).
[[nodiscard]] Suite load_suite(const std::filesystem::path& path);
[[nodiscard]] Suite parse_suite(const std::string& text, const std::string& file_name);

// --filter: comma-separated key=value terms, e.g. "variant=standard,dtype=bf16,seqlen=4096": terms of different keys
// must all hold, terms of one key are alternatives ("dtype=fp16,dtype=bf16": either dtype).
// Keys: variant, pass, dtype, distribution, batch, heads, heads_kv, seqlen (= seqlen_q), seqlen_q, seqlen_k,
// head_dim, causal, key_padding (none, right, left). Throws SuiteError on an unknown key.
[[nodiscard]] std::vector<RowSpec> filter_rows(const std::vector<RowSpec>& rows, const std::string& filter);
// --shard i/n (0 <= i < n): rows whose index % n == i. Throws SuiteError on malformed text.
[[nodiscard]] std::vector<RowSpec> shard_rows(const std::vector<RowSpec>& rows, const std::string& shard);

}  // namespace flashlab::harness
