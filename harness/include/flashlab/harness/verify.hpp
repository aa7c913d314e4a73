// Verification against the fp64 reference (DESIGN.md §5): per output tensor the max abs error, the relative
// Frobenius error and the worst index, judged by the baseline rule
//     max_abs(kernel) <= k * max_abs(baseline) + floor,   k = 2 for O and LSE, 3 for dQ, dK, dV,
// where the baseline is standard (materializing) attention computed in the same dtype: for GPU rows the GPU
// `standard` variant on the same inputs (its cuBLAS sums run in another order than any CPU emulation, and
// their error grows with N), for CPU rows, or where the GPU one cannot run, cpu-standard (fp32 arithmetic,
// rounding where `standard` rounds); floor = 2 max |ref - round(ref, output dtype)|.
// Large problems verify a stated sample of (sequence, kv head) groups.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/flops.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/harness/suite.hpp"

namespace flashlab::harness {

inline constexpr const char* kOutputTensors[] = {"o", "lse", "dq", "dk", "dv"};

struct TensorError {
  double max_abs = 0;
  double rel_fro = 0;
  std::string worst_index;  // "b,n,h,c" (LSE: "b,n,h") in the full problem's coordinates
  double baseline = 0;      // max abs error of the baseline
  double floor = 0;
  bool pass = true;
};

struct Verification {
  std::string verified_heads;  // "all", "sequence:kv-head list (k of n groups)", or "none: why"
  std::map<std::string, TensorError> errors;  // by tensor name; absent when not verified
  bool pass = true;
  [[nodiscard]] bool verified() const { return !errors.empty(); }
};

// A (sequence, kv head) group: the query heads g*G .. g*G+G-1 and kv head g of sequence b.
struct Group {
  std::int64_t b, g;
};

// Which groups to verify under the suite's settings (all, none, or a sample within verify_max_flops).
struct GroupChoice {
  std::vector<Group> groups;
  std::string description;
};
[[nodiscard]] GroupChoice choose_groups(const Problem& problem, Pass pass, const SuiteSettings& settings);

// Reads one head of a variant's output for sequence b: rows x dim values in row-major order (for "lse" dim 1).
// `head` is a query head for o, lse, dq and a kv head for dk, dv.
using FetchOutput = std::function<std::vector<double>(const std::string& tensor, std::int64_t b, std::int64_t head)>;

// The fp64 reference and the baseline of the chosen groups, computed once per row and used to check the
// outputs before timing and again after the last timed repetition.
struct GroupExpectation;
class Expectation {
 public:
  // Computes the references of `pass` (fwd: O, LSE; bwd and fwdbwd: also dQ, dK, dV) for the chosen groups.
  // The baseline's outputs come from `baseline` (a run of the GPU `standard` variant on the same inputs) when
  // given, else from cpu-standard on the CPU.
  Expectation(const Problem& problem, DType dtype, Pass pass, const InputSpec& inputs, GroupChoice choice,
              const FetchOutput* baseline = nullptr);
  ~Expectation();
  Expectation(const Expectation&) = delete;
  Expectation& operator=(const Expectation&) = delete;
  // Compares a variant's outputs with the references.
  [[nodiscard]] Verification check(const FetchOutput& fetch) const;

 private:
  Problem problem_;
  DType dtype_;
  Pass pass_;
  GroupChoice choice_;
  std::vector<GroupExpectation> groups_;
};

// The worse of two verifications of the same row (before and after timing).
[[nodiscard]] Verification worse(const Verification& a, const Verification& b);

}  // namespace flashlab::harness
