// Verification of a row against the fp64 reference (DESIGN.md §5): the one rule of core/numerics.hpp applied to the
// outputs of a variant at chosen entries of chosen (sequence, kv head) groups.
//
// Per output tensor (O, LSE, dQ, dK, dV) a row is judged by
//  - the a-priori deterministic bound of the variant's data path (reference/NUMERICS.md), entry by entry: an entry
//    above its bound fails the row, naming the tensor and the entry;
//  - the FlashAttention rule max_abs <= k max_abs(baseline) + floor (k = 2 for O and LSE, 3 for gradients), where the
//    baseline is standard (materializing) attention in the same dtype on the same inputs: the GPU `standard` variant
//    for GPU rows, cpu-standard for CPU rows (or where the GPU one cannot run); it fails low-precision variants' rows
//    in fp16 and bf16 on normal and uniform inputs and is reported elsewhere (numerics::rule_judges). A materializing row has no baseline
//    (no row is its own baseline): the bound alone judges it. A baseline that is non-finite or above its own bound
//    is an error of the row.
// Reported beside: the probabilistic bound (Higham-Mary, lambda stated) and both bounds' tightness, the fp32-upcast
// reference's error, and the metrics of core/numerics.hpp for the variant and the baseline.
//
// Which entries: every query and key row of every group while the check's cost stays within the suite's budget,
// else `verify_heads` groups drawn at random (seeded) and, in each, `verify_rows` query rows and key rows drawn at
// random plus the first and the last, each compared exactly (group_check.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/numerics.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/harness/suite.hpp"
#include "flashlab/reference/group_check.hpp"

namespace flashlab::harness {

inline constexpr const char* kOutputTensors[] = {"o", "lse", "dq", "dk", "dv"};
// The lambda of the probabilistic bounds: each entry's bound holds with probability >= 1 - 2 exp(-8) = 0.9993
// under the Higham-Mary model.
inline constexpr double kBoundLambda = 4.0;

struct TensorVerdict {
  numerics::ErrorStats error;                     // the variant against fp64
  std::string worst_index;                        // of error.max_abs: "b,n,h,c" (LSE "b,n,h"), problem coordinates
  std::optional<numerics::ErrorStats> baseline;   // the baseline against fp64 (none for materializing rows)
  std::optional<numerics::ErrorStats> upcast;     // the fp32-upcast reference against fp64
  double floor = 0;                               // of the FlashAttention rule
  std::optional<bool> rule_pass;                  // the FlashAttention rule (with a baseline)
  double bound = 0, bound_prob = 0;               // max over the entries
  std::int64_t above_bound = 0;                   // entries above their deterministic bound
  std::string above_bound_index;                  // the first of them
  double above_bound_error = 0, above_bound_limit = 0;
  double prob_exceed = 0;                         // fraction of entries above their probabilistic bound
  bool pass = true;
  [[nodiscard]] double tightness() const { return error.max_abs > 0 ? bound / error.max_abs : 0; }
  [[nodiscard]] double tightness_prob() const { return error.max_abs > 0 ? bound_prob / error.max_abs : 0; }
};

struct Verification {
  std::string verified_heads;  // "all", "b0:g3 b2:g1 (2 of 16 groups, drawn with seed S)", or "none: why"
  std::string verified_rows;   // "all", or "66 of 4096 query rows and 66 of 4096 key rows per group"
  std::string data_path;       // the variant's
  std::map<std::string, TensorVerdict> tensors;  // by tensor name; absent when not verified
  bool pass = true;
  std::string failure;  // the first reason when !pass
  [[nodiscard]] bool verified() const { return !tensors.empty(); }
};

// A (sequence, kv head) group: the query heads g*G .. g*G+G-1 and kv head g of sequence b.
struct Group {
  std::int64_t b, g;
};

// The rows of one group to verify: query rows (the same in each query head) and key rows, sorted and distinct.
using GroupRows = reference::RowChoice;

// Which groups and rows to verify under the suite's settings.
struct GroupChoice {
  std::vector<Group> groups;
  std::vector<GroupRows> rows;  // one per group
  bool all_rows = true;
  std::uint64_t seed = 0;        // of the draws
  std::string description;
  std::string rows_description;
};
[[nodiscard]] GroupChoice choose_groups(const Problem& problem, Pass pass, const SuiteSettings& settings,
                                        std::uint64_t row_seed = 0);
// The cost of verifying a row as choose_groups decides it, in flop-equivalents (0 with verify = "none"): every entry
// when that stays under verify_max_flops, else the drawn groups and rows. For --dry-run's estimates and the suite's
// max_row_seconds.
[[nodiscard]] double check_flops(const Problem& problem, Pass pass, const SuiteSettings& settings);

// Reads rows of one head of an output for sequence b: rows.size() x dim values in row-major order (for "lse" dim
// 1), row k being row rows[k] of the head. `head` is a query head for o, lse, dq and a kv head for dk, dv; `rows`
// are query rows for o, lse, dq and key rows for dk, dv.
using FetchOutput = std::function<std::vector<double>(const std::string& tensor, std::int64_t b, std::int64_t head,
                                                      const std::vector<std::int64_t>& rows)>;

// What the check needs to know about the variant and its baseline.
struct CheckSubject {
  numerics::DataPath path;                       // the variant's data path
  bool materializing = false;                    // judged by its bound alone
  std::optional<numerics::DataPath> baseline_path;  // the baseline's (standard's) data path when it has a baseline
  const FetchOutput* baseline = nullptr;         // the baseline's outputs (GPU standard), read by Expectation's
                                                 // constructor; null: cpu-standard here
};

// The fp64 reference, the fp32-upcast values, the bounds and the baseline at the chosen entries, with all that the
// comparison takes from them alone (the floor, the upcast's and the baseline's errors), computed once per row and
// used to check the outputs before timing and again after the last timed repetition. The baseline's outputs are
// read in the constructor.
struct GroupExpectation;
class Expectation {
 public:
  Expectation(const Problem& problem, DType dtype, Pass pass, const InputSpec& inputs, GroupChoice choice,
              const CheckSubject& subject);
  ~Expectation();
  Expectation(const Expectation&) = delete;
  Expectation& operator=(const Expectation&) = delete;
  [[nodiscard]] Verification check(const FetchOutput& fetch) const;

 private:
  Problem problem_;
  DType dtype_;
  Pass pass_;
  Distribution distribution_;
  GroupChoice choice_;
  CheckSubject subject_;
  std::vector<GroupExpectation> groups_;
  std::map<std::string, double> ref_max_;  // the largest finite |reference| of each tensor
  struct Fixed;                            // per tensor, what does not depend on the outputs (verify.cpp)
  std::unique_ptr<Fixed> fixed_;
};

// The worse of two verifications of the same row (before and after timing).
[[nodiscard]] Verification worse(const Verification& a, const Verification& b);

}  // namespace flashlab::harness
