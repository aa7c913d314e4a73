// The one verification rule (DESIGN.md §5), written once and used by the harness and by every test:
//  - error statistics of one output tensor against the fp64 reference (ErrorStats);
//  - the FlashAttention rule's floor (FlashAttention-3's atol) and the rule itself;
//  - the data path of a variant (where its arithmetic rounds), which the a-priori bounds of
//    reference/bounds.hpp follow, and the gamma constants of those bounds.
// The derivation of the bounds is in reference/NUMERICS.md.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "flashlab/core/dtype.hpp"
#include "flashlab/core/generator.hpp"

namespace flashlab::numerics {

// ---------------------------------------------------------------------------------------------------------------
// Error statistics

// Entries whose reference magnitude is at least this fraction of the tensor's largest magnitude enter the
// componentwise relative error (smaller ones would make it a measure of noise around zero).
inline constexpr double kRelativeGuard = 1e-2;

// The error of one tensor (computed values against the reference at the same entries). An entry whose reference is
// +-inf (the LSE of a fully masked row) must be computed equal to it, else its error is +inf; a NaN anywhere is an
// error of +inf.
struct ErrorStats {
  std::int64_t count = 0;   // entries compared
  double max_abs = 0;       // max |x - ref|
  double rel_fro = 0;       // ||x - ref||_F / ||ref||_F; 0 when both norms are 0, +inf when only ||ref||_F is 0
  double rmse = 0;          // sqrt(mean (x - ref)^2)
  double bias = 0;          // mean (x - ref)
  double max_rel = 0;       // max |x - ref| / |ref| over entries with |ref| >= kRelativeGuard max |ref|
  std::int64_t worst = -1;  // entry of max_abs (the first NaN or inf difference if any), -1 when count = 0
};

// |value - reference| as the rule measures it: 0 where both are the same infinity (the LSE of a fully masked row),
// +inf where either is not finite otherwise (NaN included).
[[nodiscard]] double abs_difference(double value, double reference);

// Accumulates ErrorStats over entries added one at a time, in any order. `reference_max` is the largest finite
// |reference| among the entries to come (it sets the guard of max_rel).
class ErrorAccumulator {
 public:
  explicit ErrorAccumulator(double reference_max = 0) : guard_(kRelativeGuard * reference_max) {}
  // Returns whether `entry` is now the worst (ErrorStats::worst).
  bool add(double value, double reference, std::int64_t entry);
  [[nodiscard]] ErrorStats finish() const;

 private:
  double guard_;
  ErrorStats s_;
  double diff_sq_ = 0, ref_sq_ = 0, diff_sum_ = 0;
  std::int64_t finite_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// The FlashAttention rule

// The absolute floor of the rule for one entry: the rounding noise of one arithmetic step on the reference in the
// output dtype, |fl(fl(r + 0.3) - 0.3) - r| with r the reference rounded to `dtype` (FlashAttention-3's tests:
// atol = 2 max |(ref + 0.3 - 0.3) - ref|). An exactly representable reference gets the noise of values near 0.3,
// so an exact output is not demanded bit for bit; a reference of exactly 0 gets the absolute noise of 0.3's
// rounding (bf16: 7.8e-4, fp16: 4.9e-5, fp32: 1.5e-8). The noise is at least u |r| (u the dtype's unit roundoff):
// its realization is 0 for some references, and where it is 0 at every entry of a small tensor (an fp32 LSE of 8
// entries) the floor would vanish and demand 2x the baseline's sub-ulp error. The floor of a tensor is twice the max
// over its entries.
[[nodiscard]] double one_step_noise(double reference, DType dtype);

// err <= k * baseline + floor, k = 2 for O and LSE and 3 for the gradients.
[[nodiscard]] double rule_factor(const std::string& tensor);
[[nodiscard]] inline bool rule_holds(double max_abs, double baseline, double floor, double k) {
  return max_abs <= k * baseline + floor;  // false when any of them is NaN; an infinite baseline is rejected before
}

// ---------------------------------------------------------------------------------------------------------------
// Data paths and gamma constants

// How a sum of n terms (a dot product's additions, a row sum, a GEMM's inner dimension, atomics) is accumulated:
// every addition rounds with unit roundoff `u` to nearest, or truncates toward zero (tensor-core accumulation,
// Fasi, Higham, Mikaitis, Pranesh 2021: products exact, additions aligned to the largest term and truncated,
// |delta| < 2u, biased).
struct Accumulation {
  double u = 0;
  bool truncating = false;
  // Deterministic: |fl(sum) - sum| <= gamma(n) sum |terms|, gamma_n = n u' / (1 - n u') with u' = 2u when truncating
  // (Higham 2002, Lemma 3.1 and §3.1; any summation order). +inf when n u' >= 1.
  [[nodiscard]] double gamma(std::int64_t n) const;
  // Probabilistic (Higham & Mary 2019, Thm 2.4: independent mean-zero errors): exp(lambda sqrt(n) u + n u^2/(1-u)) - 1,
  // each bound holding with probability >= 1 - 2 exp(-lambda^2 (1-u)^2 / 2). Truncation errors are not mean-zero:
  // they lie in (-2u, 0], mean at most u in magnitude, so the model gives n u (the bias) + lambda sqrt(n) u (Hoeffding
  // on the spread). Never above gamma(n).
  [[nodiscard]] double gamma_prob(std::int64_t n, double lambda) const;
};

// Where a variant's arithmetic rounds, stage by stage (DESIGN.md §5). Each variant states its data path beside its
// registry entry (Variant::data_path), so the a-priori bound follows the kernel. Unit roundoffs are 0 where a stage
// does not round (exact, or kept at higher precision counted elsewhere).
struct DataPath {
  std::string summary;  // one line, e.g. "S fp32 (mma, truncating); online softmax, 128-key tiles; P bf16; O bf16"

  // forward: S = scale Q K^T, P = softmax(S), O = P V, LSE
  double u_arith = 0;        // the softmax arithmetic (shift, scale, FMA, multiply): fp32 2^-24 (fp64 on the CPU)
  Accumulation qk;           // the dot products of S (over d)
  double u_scores = 0;       // S stored before the softmax (standard: the dtype), 0 when kept in registers
  double u_exp = 0;          // relative error of one exp evaluation, its own rounding included
  double u_p = 0;            // P rounded before P V (the dtype); 0 when P V takes P unrounded
  DType p_dtype = DType::fp64;
  bool p_normalized = true;  // P divided by l before P V (materializing) or O = acc / l after (online softmax)
  Accumulation pv;           // O = P V (over keys)
  Accumulation row_sum;      // l = sum of exp
  std::int64_t row_sum_chains = 1;  // l summed as this many sequential chains (threads of a row), then pairwise
  std::int64_t key_tile = 0; // online softmax: keys per tile (one rescale per tile at most); 0: no rescale
  double u_out = 0;          // O (and the gradients) rounded to the output dtype
  DType out_dtype = DType::fp64;

  // backward: P recomputed from S and LSE, dV = P^T dO, dP = dO V^T, D = rowsum(dO o O), dS = P o (dP - D),
  // dQ = scale dS K, dK = scale dS^T Q
  double u_p_bwd = 0;        // P rounded before dV (and before dS where the variant stores P: standard)
  bool ds_from_rounded_p = false;
  Accumulation dp;           // dP (over d_v)
  double u_dp_stored = 0;    // dP stored before dS (standard: the dtype)
  Accumulation delta;        // D (over d_v)
  double u_ds = 0;           // dS rounded before the dQ and dK products
  Accumulation dq, dk, dv;   // the products' inner dimensions (keys for dQ; query rows of the group for dK, dV)
  std::int64_t dq_block = 0;  // keys per partial sum of dQ added into an accumulator (atomics); 0: one sum
};

// Whether the rule judges a row: it compares a kernel that computes in low precision with low-precision standard
// attention, the setting it was made for (FlashAttention's tests: fp16, bf16, inputs drawn from a normal or uniform
// distribution), where the baseline's error is set by the dtype's rounding of S and P. Elsewhere a correct variant
// can lose to the baseline and the rule is reported while the bound alone judges:
//  - in fp32 and fp64 by a few ulps at single entries (cpu-reference recomputes P from the fp32-stored LSE,
//    cpu-standard is exact where P = 1), and for a variant computing in fp64 whose only errors are the stored
//    outputs' roundings and their propagation (cpu-reference's backward reads its fp16 O);
//  - on the stress distributions (outliers, peaked, ...), where an algorithmic difference of the baseline dominates:
//    FlashAttention's backward takes D = rowsum(dO o O) from the O rounded to the dtype, the materializing softmax
//    backward sums P o dP, and with large |O| the first loses by 5x at single dQ and dK entries (reference/NUMERICS.md
//    §7, measured).
[[nodiscard]] inline bool rule_judges(DType dtype, const DataPath& path, Distribution distribution) {
  const bool rule_setting = distribution == Distribution::normal || distribution == Distribution::uniform;
  return rule_setting && (dtype == DType::fp16 || dtype == DType::bf16) && path.u_arith >= unit_roundoff(DType::fp32);
}

// The data path of materializing attention in `dtype` (standard, cpu-standard): S, P, dP, dS stored in the dtype;
// the softmax in `arith` (fp32 for fp32/fp16/bf16; fp64 for fp64); GEMMs accumulate in `arith`, truncating where
// `tensor_cores` (GPU GEMMs: the truncating model also bounds cuBLAS's rounding-to-nearest paths); `u_exp` the exp's
// relative error; LSE = max + log(sum).
[[nodiscard]] DataPath materializing_path(DType dtype, DType arith, bool tensor_cores, double u_exp, std::string summary);
// The data path of the fp64 reference computing in fp64 with outputs rounded to `dtype` (cpu-reference).
[[nodiscard]] DataPath reference_path(DType dtype);

// The additions on the longest path of a row sum of n terms split into `chains` sequential chains combined pairwise.
[[nodiscard]] std::int64_t row_sum_depth(std::int64_t n, std::int64_t chains);

// Half the spacing of the subnormal numbers of `dtype` (the absolute rounding error of a tiny value), 0 for fp64.
[[nodiscard]] double subnormal_half_spacing(DType dtype);
// The smallest normal magnitude of `dtype`.
[[nodiscard]] double min_normal(DType dtype);

}  // namespace flashlab::numerics
