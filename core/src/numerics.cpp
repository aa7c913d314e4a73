#include "flashlab/core/numerics.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

namespace flashlab::numerics {
namespace {
constexpr double kInfinity = std::numeric_limits<double>::infinity();
// The constant FlashAttention-3's tests add and subtract to measure one step's rounding noise.
constexpr double kNoiseShift = 0.3;
}  // namespace

double abs_difference(double value, double reference) {
  if (std::isinf(reference) && value == reference) return 0;
  if (!std::isfinite(value) || !std::isfinite(reference)) return kInfinity;
  return std::abs(value - reference);
}

bool ErrorAccumulator::add(double value, double reference, std::int64_t entry) {
  ++s_.count;
  const double magnitude = abs_difference(value, reference);
  const bool worst = magnitude > s_.max_abs || s_.worst < 0;  // the first of equal maxima (the first non-finite one)
  if (worst) {
    s_.max_abs = magnitude;
    s_.worst = entry;
  }
  if (std::isinf(magnitude) || std::isinf(reference)) return worst;  // an exact -inf LSE: no magnitude to average
  const double diff = value - reference;
  ++finite_;
  diff_sq_ += diff * diff;
  ref_sq_ += reference * reference;
  diff_sum_ += diff;
  if (std::abs(reference) >= guard_ && reference != 0) {
    s_.max_rel = std::max(s_.max_rel, magnitude / std::abs(reference));
  }
  return worst;
}

ErrorStats ErrorAccumulator::finish() const {
  ErrorStats s = s_;
  if (std::isinf(s.max_abs)) {
    s.rel_fro = s.rmse = s.max_rel = kInfinity;
    s.bias = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  if (finite_ > 0) {
    s.rmse = std::sqrt(diff_sq_ / static_cast<double>(finite_));
    s.bias = diff_sum_ / static_cast<double>(finite_);
  }
  s.rel_fro = ref_sq_ > 0 ? std::sqrt(diff_sq_ / ref_sq_) : (diff_sq_ > 0 ? kInfinity : 0.0);
  return s;
}

double one_step_noise(double reference, DType dtype) {
  if (!std::isfinite(reference)) return 0;
  const double r = round_to(reference, dtype);
  const double up = round_to(r + kNoiseShift, dtype);
  const double back = round_to(up - kNoiseShift, dtype);
  return std::max(std::abs(back - r), unit_roundoff(dtype) * std::abs(r));
}

double rule_factor(const std::string& tensor) { return (tensor == "o" || tensor == "lse") ? 2.0 : 3.0; }

double Accumulation::gamma(std::int64_t n) const {
  if (n <= 0 || u == 0) return 0;
  const double step = truncating ? 2 * u : u;
  const double nu = static_cast<double>(n) * step;
  return nu < 1 ? nu / (1 - nu) : kInfinity;
}

double Accumulation::gamma_prob(std::int64_t n, double lambda) const {
  if (n <= 0 || u == 0) return 0;
  const double nn = static_cast<double>(n);
  double bound;
  if (truncating) {
    bound = nn * u + lambda * std::sqrt(nn) * u;
  } else {
    bound = std::expm1(lambda * std::sqrt(nn) * u + nn * u * u / (1 - u));
  }
  return std::min(bound, gamma(n));
}

DataPath materializing_path(DType dtype, DType arith, bool tensor_cores, double u_exp, std::string summary) {
  const double ua = unit_roundoff(arith), u = unit_roundoff(dtype);
  DataPath path;
  path.summary = std::move(summary);
  path.u_arith = ua;
  path.qk = path.pv = path.dp = path.dq = path.dk = path.dv = {ua, tensor_cores};
  path.u_scores = u;
  path.u_exp = u_exp;
  path.u_p = path.u_p_bwd = path.u_dp_stored = path.u_ds = path.u_out = u;
  path.p_dtype = path.out_dtype = dtype;
  path.p_normalized = true;
  path.row_sum = path.delta = {ua, false};
  path.ds_from_rounded_p = true;
  return path;
}

DataPath reference_path(DType dtype) {
  const double u64 = unit_roundoff(DType::fp64);
  DataPath path;
  path.summary = "fp64 throughout (exp within 1 ulp), outputs rounded to " + std::string(name(dtype));
  path.u_arith = u64;
  path.qk = path.pv = path.row_sum = path.dp = path.delta = path.dq = path.dk = path.dv = {u64, false};
  path.u_exp = 2 * u64;
  path.p_dtype = DType::fp64;
  path.p_normalized = false;  // O = (E V) / l
  path.u_out = unit_roundoff(dtype);
  path.out_dtype = dtype;
  return path;
}

std::int64_t row_sum_depth(std::int64_t n, std::int64_t chains) {
  if (chains <= 1) return n;
  std::int64_t levels = 0;
  while ((std::int64_t{1} << levels) < chains) ++levels;
  return (n + chains - 1) / chains + levels;
}

double subnormal_half_spacing(DType dtype) {
  if (dtype == DType::fp64) return 0;
  const FloatFormat f = format_of(dtype);
  return detmath::ldexp_exact(1.0, f.min_normal_exponent - f.precision);
}

double min_normal(DType dtype) { return detmath::ldexp_exact(1.0, format_of(dtype).min_normal_exponent); }

}  // namespace flashlab::numerics
