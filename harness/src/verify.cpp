#include "flashlab/harness/verify.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "flashlab/core/storage.hpp"
#include "flashlab/harness/memory.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace flashlab::harness {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

bool has_backward(Pass pass) { return pass != Pass::fwd; }

// The group's own problem: one sequence, its G query heads and one kv head, scale made explicit.
Problem group_problem(const Problem& p, std::int64_t b) {
  const Sequence s = p.sequence(b);
  Problem sub;
  sub.batch = 1;
  sub.heads = p.group_size();
  sub.heads_kv = 1;
  sub.seqlen_q = s.seqlen_q;
  sub.seqlen_k = s.seqlen_k;
  sub.head_dim = p.head_dim;
  sub.head_dim_v = p.dv();
  sub.causal = p.causal;
  sub.window = p.window;
  sub.softmax_scale = p.scale();
  return sub;
}

// Reference cost of verifying a problem: the fp64 reference and the baseline, forward and (if any) backward.
double verification_flops(const Problem& p, Pass pass) {
  return 2 * attention_flops(p, has_backward(pass) ? Pass::fwdbwd : Pass::fwd);
}

// Inputs of group (b, g) as the full problem's generator gives them (global linear indices).
void fill_group(const Problem& p, const Group& grp, const InputSpec& in, reference::AttentionData<double>& data) {
  const AttentionShapes full = attention_shapes(p);
  const Sequence s = p.sequence(grp.b);
  const std::int64_t group = p.group_size();
  auto value = [&](TensorId t, const Shape<4>& shape, std::int64_t token, std::int64_t head, std::int64_t c) {
    const std::int64_t linear = ((s.slot * shape[1] + token) * shape[2] + head) * shape[3] + c;
    return input_value(in.seed, static_cast<std::uint32_t>(t), static_cast<std::uint64_t>(linear), in.distribution,
                       in.dtype);
  };
  for (std::int64_t n = 0; n < s.seqlen_q; ++n) {
    for (std::int64_t j = 0; j < group; ++j) {
      const std::int64_t h = grp.g * group + j;
      for (std::int64_t c = 0; c < p.head_dim; ++c) data.q(0, n, j, c) = value(TensorId::q, full.q, s.q_offset + n, h, c);
      for (std::int64_t c = 0; c < p.dv(); ++c) {
        data.d_out(0, n, j, c) = value(TensorId::d_out, full.o, s.q_offset + n, h, c);
      }
    }
  }
  for (std::int64_t n = 0; n < s.seqlen_k; ++n) {
    for (std::int64_t c = 0; c < p.head_dim; ++c) data.k(0, n, 0, c) = value(TensorId::k, full.k, s.k_offset + n, grp.g, c);
    for (std::int64_t c = 0; c < p.dv(); ++c) data.v(0, n, 0, c) = value(TensorId::v, full.v, s.k_offset + n, grp.g, c);
  }
}

// The baseline: cpu-standard in the run's dtype on the group's inputs, outputs widened to double.
struct Outputs {
  std::vector<double> o, lse, dq, dk, dv;  // contiguous [1, N, heads, dim] / [1, heads, N_q]
};
Outputs run_baseline(const Problem& sub, DType dtype, Pass pass, const reference::AttentionData<double>& in) {
  const kernels::Variant* standard = find_variant("cpu-standard");
  const AttentionShapes s = attention_shapes(sub);
  const std::size_t es = static_cast<std::size_t>(size_bytes(dtype));
  auto buffer = [&](const Shape<4>& shape) { return std::vector<unsigned char>(element_count<4>(shape) * es); };
  auto encode = [&](const Tensor<double, 4>& t) {
    std::vector<unsigned char> bytes = buffer(t.shape());
    for (std::int64_t i = 0; i < t.numel(); ++i) store(bytes.data(), i, dtype, t.values()[static_cast<std::size_t>(i)]);
    return bytes;
  };
  auto decode = [&](const std::vector<unsigned char>& bytes) {
    std::vector<double> out(bytes.size() / es);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = load(bytes.data(), static_cast<std::int64_t>(i), dtype);
    return out;
  };
  std::vector<unsigned char> q = encode(in.q), k = encode(in.k), v = encode(in.v), d_out = encode(in.d_out);
  std::vector<unsigned char> o = buffer(s.o), dq = buffer(s.q), dk = buffer(s.k), dv = buffer(s.v);
  std::vector<float> lse(static_cast<std::size_t>(element_count<3>(s.lse)));
  kernels::AttentionParams params;
  params.problem = sub;
  params.dtype = dtype;
  params.q = q.data();
  params.k = k.data();
  params.v = v.data();
  params.o = o.data();
  params.lse = lse.data();
  params.d_out = d_out.data();
  params.dq = dq.data();
  params.dk = dk.data();
  params.dv = dv.data();
  params.q_strides = params.dq_strides = kernels::contiguous_bshd(s.q[1], s.q[2], s.q[3]);
  params.k_strides = params.dk_strides = kernels::contiguous_bshd(s.k[1], s.k[2], s.k[3]);
  params.v_strides = params.dv_strides = kernels::contiguous_bshd(s.v[1], s.v[2], s.v[3]);
  params.o_strides = params.d_out_strides = kernels::contiguous_bshd(s.o[1], s.o[2], s.o[3]);
  HostAllocator allocator;
  const kernels::LaunchContext ctx{allocator};
  standard->forward(params, ctx);
  Outputs out;
  out.o = decode(o);
  out.lse.assign(lse.begin(), lse.end());
  if (has_backward(pass)) {
    standard->backward(params, ctx);
    out.dq = decode(dq);
    out.dk = decode(dk);
    out.dv = decode(dv);
  }
  return out;
}

// Running error of one tensor over all verified groups.
struct Accumulator {
  double max_abs = 0, diff_sq = 0, ref_sq = 0, baseline = 0, floor = 0;
  std::string worst;
  bool any = false;

  static double difference(double out, double ref) {
    if (std::isinf(ref) && out == ref) return 0;
    if (!std::isfinite(out) || !std::isfinite(ref)) return kInfinity;
    return std::abs(out - ref);
  }
  void add(double out, double ref, double base, DType stored, const std::string& where) {
    any = true;
    const double diff = difference(out, ref);
    if (diff > max_abs || (std::isnan(out) && worst.empty())) {
      max_abs = std::max(max_abs, diff);
      worst = where;
    }
    if (std::isfinite(ref)) {
      diff_sq += diff * diff;
      ref_sq += ref * ref;
      floor = std::max(floor, 2 * std::abs(ref - round_to(ref, stored)));
    }
    baseline = std::max(baseline, difference(base, ref));
  }
  [[nodiscard]] TensorError result(double k) const {
    TensorError e;
    e.max_abs = max_abs;
    e.rel_fro = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
    e.worst_index = worst;
    e.baseline = baseline;
    e.floor = floor;
    e.pass = std::isfinite(max_abs) && max_abs <= k * baseline + floor;
    return e;
  }
};

}  // namespace

GroupChoice choose_groups(const Problem& p, Pass pass, const SuiteSettings& settings) {
  GroupChoice choice;
  const std::int64_t groups = p.batch * p.heads_kv;
  auto all = [&] {
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t g = 0; g < p.heads_kv; ++g) choice.groups.push_back({b, g});
    choice.description = "all";
  };
  if (settings.verify == "none") {
    choice.description = "none: verify = \"none\"";
    return choice;
  }
  if (settings.verify == "all" || verification_flops(p, pass) <= settings.verify_max_flops) {
    all();
    return choice;
  }
  // Evenly spaced groups (the first and the last among them) while their cost fits the budget.
  const std::int64_t wanted = std::clamp<std::int64_t>(settings.verify_heads, 1, groups);
  double cost = 0;
  for (std::int64_t i = 0; i < wanted; ++i) {
    const std::int64_t index = wanted == 1 ? 0 : i * (groups - 1) / (wanted - 1);
    const Group grp{index / p.heads_kv, index % p.heads_kv};
    const double group_cost = verification_flops(group_problem(p, grp.b), pass);
    if (cost + group_cost > settings.verify_max_flops) break;
    cost += group_cost;
    choice.groups.push_back(grp);
  }
  if (choice.groups.empty()) {
    choice.description = fmt::format("none: one kv-head group costs {:.3g} reference flops > verify_max_flops {:.3g}",
                                     verification_flops(group_problem(p, 0), pass), settings.verify_max_flops);
    return choice;
  }
  std::string list;
  for (const Group& grp : choice.groups) list += fmt::format("{}b{}:g{}", list.empty() ? "" : " ", grp.b, grp.g);
  choice.description = fmt::format("{} ({} of {} kv-head groups)", list, choice.groups.size(), groups);
  return choice;
}

struct GroupExpectation {
  Group group;
  reference::AttentionData<double> reference;
  Outputs baseline;
};

// The baseline outputs of a group read from another variant's run, in the group problem's layout.
Outputs fetched_baseline(const Problem& p, const Group& grp, Pass pass, const FetchOutput& fetch) {
  const Problem sub = group_problem(p, grp.b);
  const AttentionShapes s = attention_shapes(sub);
  const std::int64_t group = p.group_size();
  Outputs out;
  auto place = [&](std::vector<double>& target, const Shape<4>& shape, const std::string& tensor, std::int64_t local,
                   std::int64_t global) {
    target.resize(static_cast<std::size_t>(element_count<4>(shape)));
    const std::vector<double> values = fetch(tensor, grp.b, global);
    const TensorView<double, 4> view(target.data(), shape);
    for (std::int64_t n = 0; n < shape[1]; ++n)
      for (std::int64_t c = 0; c < shape[3]; ++c) view(0, n, local, c) = values[static_cast<std::size_t>(n * shape[3] + c)];
  };
  out.lse.resize(static_cast<std::size_t>(element_count<3>(s.lse)));
  for (std::int64_t j = 0; j < group; ++j) {
    const std::int64_t h = grp.g * group + j;
    place(out.o, s.o, "o", j, h);
    const std::vector<double> lse = fetch("lse", grp.b, h);
    std::copy(lse.begin(), lse.end(), out.lse.begin() + j * sub.seqlen_q);
    if (has_backward(pass)) place(out.dq, s.q, "dq", j, h);
  }
  if (has_backward(pass)) {
    place(out.dk, s.k, "dk", 0, grp.g);
    place(out.dv, s.v, "dv", 0, grp.g);
  }
  return out;
}

Expectation::Expectation(const Problem& problem, DType dtype, Pass pass, const InputSpec& inputs, GroupChoice choice,
                         const FetchOutput* baseline)
    : problem_(problem), dtype_(dtype), pass_(pass), choice_(std::move(choice)) {
  for (const Group& grp : choice_.groups) {
    const Problem sub = group_problem(problem_, grp.b);
    reference::AttentionData<double> ref(sub);
    fill_group(problem_, grp, inputs, ref);
    ref.run_forward();
    if (has_backward(pass_)) ref.run_backward();
    Outputs base = baseline ? fetched_baseline(problem_, grp, pass_, *baseline) : run_baseline(sub, dtype_, pass_, ref);
    groups_.push_back({grp, std::move(ref), std::move(base)});
  }
  if (!choice_.groups.empty()) {
    choice_.description += baseline ? "; baseline: standard on the GPU" : "; baseline: cpu-standard";
  }
}

Expectation::~Expectation() = default;

Verification Expectation::check(const FetchOutput& fetch) const {
  Verification result;
  result.verified_heads = choice_.description;
  if (groups_.empty()) return result;
  std::map<std::string, Accumulator> acc;
  const Problem& p = problem_;
  const std::int64_t group = p.group_size();
  for (const GroupExpectation& ge : groups_) {
    const Group& grp = ge.group;
    const reference::AttentionData<double>& ref = ge.reference;
    const Outputs& base = ge.baseline;
    const Sequence s = p.sequence(grp.b);
    auto compare_rows = [&](const std::string& name, const Tensor<double, 4>& r, const std::vector<double>& b,
                            std::int64_t local_head, std::int64_t global_head) {
      const std::int64_t rows = r.shape()[1], dim = r.shape()[3];
      const std::vector<double> out = fetch(name, grp.b, global_head);
      for (std::int64_t n = 0; n < rows; ++n) {
        for (std::int64_t c = 0; c < dim; ++c) {
          const auto local = static_cast<std::size_t>(r.view().offset(0, n, local_head, c));
          acc[name].add(out[static_cast<std::size_t>(n * dim + c)], r.values()[local], b[local], dtype_,
                        fmt::format("{},{},{},{}", grp.b, n, global_head, c));
        }
      }
    };
    for (std::int64_t j = 0; j < group; ++j) {
      const std::int64_t h = grp.g * group + j;
      compare_rows("o", ref.o, base.o, j, h);
      const std::vector<double> lse = fetch("lse", grp.b, h);
      for (std::int64_t n = 0; n < s.seqlen_q; ++n) {
        const auto local = static_cast<std::size_t>(ref.lse.view().offset(0, j, n));
        acc["lse"].add(lse[static_cast<std::size_t>(n)], ref.lse.values()[local], base.lse[local], DType::fp32,
                       fmt::format("{},{},{}", grp.b, n, h));
      }
      if (has_backward(pass_)) compare_rows("dq", ref.dq, base.dq, j, h);
    }
    if (has_backward(pass_)) {
      compare_rows("dk", ref.dk, base.dk, 0, grp.g);
      compare_rows("dv", ref.dv, base.dv, 0, grp.g);
    }
  }
  for (const auto& [name, a] : acc) {
    const double k = (name == "o" || name == "lse") ? 2.0 : 3.0;
    result.errors[name] = a.result(k);
    result.pass = result.pass && result.errors[name].pass;
  }
  return result;
}

Verification worse(const Verification& a, const Verification& b) {
  Verification w = a;
  w.pass = a.pass && b.pass;
  for (const auto& [name, e] : b.errors) {
    const auto it = a.errors.find(name);
    const bool both_pass = (it == a.errors.end() || it->second.pass) && e.pass;
    if (it == a.errors.end() || e.max_abs > it->second.max_abs) w.errors[name] = e;
    w.errors[name].pass = both_pass;
  }
  return w;
}

}  // namespace flashlab::harness
