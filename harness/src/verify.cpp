#include "flashlab/harness/verify.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>

#include "flashlab/core/parallel.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/harness/memory.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/reference/group_check.hpp"

namespace flashlab::harness {
namespace {

bool has_backward(Pass pass) { return pass != Pass::fwd; }

// A group's own problem: one sequence of lengths (nq, nk), the G query heads and one kv head, scale made explicit.
Problem group_of(const Problem& p, std::int64_t nq, std::int64_t nk) {
  Problem sub;
  sub.batch = 1;
  sub.heads = p.group_size();
  sub.heads_kv = 1;
  sub.seqlen_q = nq;
  sub.seqlen_k = nk;
  sub.head_dim = p.head_dim;
  sub.head_dim_v = p.dv();
  sub.causal = p.causal;
  sub.window = p.window;
  sub.softmax_scale = p.scale();
  sub.dropout = p.dropout;
  return sub;
}

// Group b's problem (sequence b, with its key padding).
Problem group_problem(const Problem& p, std::int64_t b) {
  const Sequence s = p.sequence(b);
  Problem sub = group_of(p, s.seqlen_q, s.seqlen_k);
  if (p.is_padded()) {
    sub.key_padding = p.key_padding;
    sub.valid_lengths = {p.valid_lengths[static_cast<std::size_t>(b)]};
  }
  return sub;
}

// Cost of verifying every entry of a problem, in flop-equivalents: the fp64 reference, the fp32 upcast and the
// bounds of two data paths (each about one reference pass), forward and (if any) backward; plus a per-entry cost
// for every input value generated and every output entry checked (the generator, the per-entry bound terms, the
// statistics). kEntryFlops was fitted on the random suite's rows (verify_seconds against both terms, least squares,
// 2 cores): about 400 flop-equivalents per entry, which dominates when N_k is small and N_q d large.
constexpr double kEntryFlops = 400;
double verification_flops(const Problem& p, Pass pass) {
  const bool backward = has_backward(pass);
  const double q_rows = static_cast<double>(p.heads) * static_cast<double>(p.total_q());
  const double k_rows = static_cast<double>(p.heads_kv) * static_cast<double>(p.total_k());
  const auto d = static_cast<double>(p.head_dim), dv = static_cast<double>(p.dv());
  // inputs Q, K, V (and dO); outputs O, LSE (and dQ, dK, dV)
  double entries = q_rows * (d + dv + 1) + k_rows * (d + dv);
  if (backward) entries += q_rows * (dv + d) + k_rows * (d + dv);
  return 4 * attention_flops(p, backward ? Pass::fwdbwd : Pass::fwd) + kEntryFlops * entries;
}

// Inputs of group (b, g) as the full problem's generator gives them (global linear indices, the tensors' layouts,
// the token remap of an unpadded row);
// dO only when there is a backward pass. `query_rows`, when given, limits Q to those rows (the others stay 0): a
// forward check reads no other query row.
reference::GroupInputs group_inputs(const Problem& p, const Group& grp, const InputSpec& in, Pass pass,
                                    const std::vector<std::int64_t>* query_rows) {
  const AttentionShapes full = attention_shapes(p);
  const Sequence s = p.sequence(grp.b);
  const std::int64_t group = p.group_size(), d = p.head_dim, dv = p.dv();
  reference::GroupInputs g;
  g.problem = group_problem(p, grp.b);
  g.problem.dropout.offset += static_cast<std::uint64_t>(grp.b * p.heads + grp.g * group);  // the group's mask
  g.q.resize(static_cast<std::size_t>(group * s.seqlen_q * d));
  if (has_backward(pass)) g.d_out.resize(static_cast<std::size_t>(group * s.seqlen_q * dv));
  g.k.resize(static_cast<std::size_t>(s.seqlen_k * d));
  g.v.resize(static_cast<std::size_t>(s.seqlen_k * dv));
  auto value = [&](TensorId t, const Shape<4>& shape, std::int64_t token, std::int64_t head, std::int64_t c) {
    const std::int64_t linear = ((s.slot * shape[1] + token) * shape[2] + head) * shape[3] + c;
    const InputLayout layout{shape[2], shape[3], in.token_source.empty() ? nullptr : in.token_source.data()};
    return input_value(in.seed, static_cast<std::uint32_t>(t), static_cast<std::uint64_t>(linear), in.distribution,
                       in.dtype, layout);
  };
  const std::int64_t nq = query_rows ? static_cast<std::int64_t>(query_rows->size()) : s.seqlen_q;
  auto query_row = [&](std::int64_t r) { return query_rows ? (*query_rows)[static_cast<std::size_t>(r)] : r; };
  // generated on all cores (the generator costs about as much per element as a few hundred flops)
  constexpr std::int64_t kTokens = 256;
  const std::int64_t q_blocks = (nq + kTokens - 1) / kTokens, q_items = group * q_blocks;
  const std::int64_t k_items = (s.seqlen_k + kTokens - 1) / kTokens;
  parallel_for(q_items + k_items, default_worker_count(), [&](std::int64_t item, int) {
    if (item < q_items) {
      const std::int64_t j = item / q_blocks, r0 = (item % q_blocks) * kTokens;
      const std::int64_t h = grp.g * group + j;
      for (std::int64_t r = r0; r < std::min(nq, r0 + kTokens); ++r) {
        const std::int64_t n = query_row(r);
        for (std::int64_t c = 0; c < d; ++c) {
          g.q[static_cast<std::size_t>((j * s.seqlen_q + n) * d + c)] = value(TensorId::q, full.q, s.q_offset + n, h, c);
        }
        for (std::int64_t c = 0; c < dv && !g.d_out.empty(); ++c) {
          g.d_out[static_cast<std::size_t>((j * s.seqlen_q + n) * dv + c)] =
              value(TensorId::d_out, full.o, s.q_offset + n, h, c);
        }
      }
      return;
    }
    const std::int64_t n0 = (item - q_items) * kTokens;
    for (std::int64_t n = n0; n < std::min(s.seqlen_k, n0 + kTokens); ++n) {
      for (std::int64_t c = 0; c < d; ++c) g.k[static_cast<std::size_t>(n * d + c)] = value(TensorId::k, full.k, s.k_offset + n, grp.g, c);
      for (std::int64_t c = 0; c < dv; ++c) g.v[static_cast<std::size_t>(n * dv + c)] = value(TensorId::v, full.v, s.k_offset + n, grp.g, c);
    }
  });
  return g;
}

// cpu-standard in the run's dtype on the group's inputs: its outputs by (tensor, local head), full heads.
using HeadOutputs = std::map<std::pair<std::string, std::int64_t>, std::vector<double>>;
HeadOutputs run_cpu_baseline(const reference::GroupInputs& in, DType dtype, Pass pass) {
  const kernels::Variant* standard = find_variant("cpu-standard");
  const Problem& sub = in.problem;
  const AttentionShapes s = attention_shapes(sub);
  const std::size_t es = static_cast<std::size_t>(size_bytes(dtype));
  const std::int64_t group = sub.heads, nq = sub.seqlen_q, nk = sub.seqlen_k, d = sub.head_dim, dv = sub.dv();
  auto buffer = [&](const Shape<4>& shape) { return std::vector<unsigned char>(element_count<4>(shape) * es); };
  // group inputs are [G][N][dim]; the params tensors are BSHD [1, N, G, dim]
  auto encode = [&](const std::vector<double>& values, std::int64_t heads, std::int64_t rows, std::int64_t dim) {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(heads * rows * dim) * es);
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t n = 0; n < rows; ++n)
        for (std::int64_t c = 0; c < dim; ++c)
          store(bytes.data(), (n * heads + h) * dim + c, dtype, values[static_cast<std::size_t>((h * rows + n) * dim + c)]);
    return bytes;
  };
  std::vector<unsigned char> q = encode(in.q, group, nq, d), k = encode(in.k, 1, nk, d), v = encode(in.v, 1, nk, dv),
                             d_out = in.d_out.empty() ? buffer(s.o) : encode(in.d_out, group, nq, dv);
  std::vector<unsigned char> o = buffer(s.o), dq = buffer(s.q), dk = buffer(s.k), dvb = buffer(s.v);
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
  params.dv = dvb.data();
  params.q_strides = params.dq_strides = kernels::contiguous_bshd(s.q[1], s.q[2], s.q[3]);
  params.k_strides = params.dk_strides = kernels::contiguous_bshd(s.k[1], s.k[2], s.k[3]);
  params.v_strides = params.dv_strides = kernels::contiguous_bshd(s.v[1], s.v[2], s.v[3]);
  params.o_strides = params.d_out_strides = kernels::contiguous_bshd(s.o[1], s.o[2], s.o[3]);
  HostAllocator allocator;
  const kernels::LaunchContext ctx{allocator};
  standard->forward(params, ctx);
  auto head = [&](const std::vector<unsigned char>& bytes, std::int64_t heads, std::int64_t h, std::int64_t rows,
                  std::int64_t dim) {
    std::vector<double> out(static_cast<std::size_t>(rows * dim));
    for (std::int64_t n = 0; n < rows; ++n)
      for (std::int64_t c = 0; c < dim; ++c) out[static_cast<std::size_t>(n * dim + c)] = load(bytes.data(), (n * heads + h) * dim + c, dtype);
    return out;
  };
  HeadOutputs out;
  for (std::int64_t h = 0; h < group; ++h) {
    out[{"o", h}] = head(o, group, h, nq, dv);
    out[{"lse", h}] = std::vector<double>(lse.begin() + h * nq, lse.begin() + (h + 1) * nq);
  }
  if (has_backward(pass)) {
    standard->backward(params, ctx);
    for (std::int64_t h = 0; h < group; ++h) out[{"dq", h}] = head(dq, group, h, nq, d);
    out[{"dk", 0}] = head(dk, 1, 0, nk, d);
    out[{"dv", 0}] = head(dvb, 1, 0, nk, dv);
  }
  return out;
}

// `count` distinct rows of [0, n) drawn at random with the first and the last, sorted; all rows when count >= n.
std::vector<std::int64_t> sample_rows(std::int64_t n, std::int64_t count, std::mt19937_64& rng) {
  std::vector<std::int64_t> rows;
  if (count + 2 >= n) {
    for (std::int64_t i = 0; i < n; ++i) rows.push_back(i);
    return rows;
  }
  std::set<std::int64_t> chosen{0, n - 1};
  std::uniform_int_distribution<std::int64_t> draw(0, n - 1);
  while (static_cast<std::int64_t>(chosen.size()) < count + 2) chosen.insert(draw(rng));
  return {chosen.begin(), chosen.end()};
}

// What one tensor's check holds that does not depend on the variant's outputs (the floor, the bounds' maxima, the
// upcast and baseline statistics): computed once per row, in the constructor.
struct TensorFixed {
  numerics::ErrorAccumulator baseline, upcast;
  bool has_baseline = false, has_upcast = false;
  double floor = 0, bound = 0, bound_prob = 0;
  std::int64_t count = 0, baseline_above = 0;
  std::string baseline_above_index;
  double baseline_above_error = 0, baseline_above_limit = 0;
};

// The variant's errors of one tensor over all verified groups, accumulated at each check.
struct TensorAccumulator {
  numerics::ErrorAccumulator error;
  std::int64_t above = 0, above_prob = 0;
  std::string above_index, worst_index;
  double above_error = 0, above_limit = 0;
};

}  // namespace

GroupChoice choose_groups(const Problem& p, Pass pass, const SuiteSettings& settings, std::uint64_t row_seed) {
  GroupChoice choice;
  const std::int64_t groups = p.batch * p.heads_kv;
  choice.seed = settings.seed ^ (row_seed * 0x9E3779B97F4A7C15ULL);
  if (settings.verify == "none") {
    choice.description = "none: verify = \"none\"";
    return choice;
  }
  // the rows of each chosen group: every row, or `verify_rows` drawn (with the first and the last); drawn from
  // their own generator, after the groups
  auto choose_rows = [&](std::optional<std::int64_t> drawn) {  // drawn: rows per group; none: every row
    std::mt19937_64 rng(choice.seed);
    for (const Group& grp : choice.groups) {
      const Sequence s = p.sequence(grp.b);
      const std::int64_t count = drawn ? *drawn : std::max(s.seqlen_q, s.seqlen_k);
      GroupRows rows;
      rows.query = sample_rows(s.seqlen_q, count, rng);
      if (has_backward(pass)) rows.key = sample_rows(s.seqlen_k, count, rng);
      choice.rows.push_back(std::move(rows));
    }
  };
  if (settings.verify == "all" || verification_flops(p, pass) <= settings.verify_max_flops) {
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t g = 0; g < p.heads_kv; ++g) choice.groups.push_back({b, g});
    choice.description = "all";
    choice.rows_description = "all";
    choose_rows(std::nullopt);
    return choice;
  }
  // Groups drawn at random (sequences with no query or no key rows are drawn like the others), rows sampled in each.
  std::mt19937_64 rng(choice.seed);
  const std::int64_t wanted = std::clamp<std::int64_t>(settings.verify_heads, 1, groups);
  std::set<std::int64_t> picked;
  std::uniform_int_distribution<std::int64_t> draw(0, groups - 1);
  while (static_cast<std::int64_t>(picked.size()) < wanted) picked.insert(draw(rng));
  std::string list;
  for (const std::int64_t index : picked) {
    const Group grp{index / p.heads_kv, index % p.heads_kv};
    choice.groups.push_back(grp);
    list += fmt::format("{}b{}:g{}", list.empty() ? "" : " ", grp.b, grp.g);
  }
  choice.all_rows = false;
  choice.description = fmt::format("{} ({} of {} kv-head groups, drawn)", list, choice.groups.size(), groups);
  choice.rows_description =
      fmt::format("{} query rows (of N_q = {}) and {} key rows (of N_k = {}) per group: first, last and drawn",
                  std::min<std::int64_t>(p.seqlen_q, settings.verify_rows + 2), p.seqlen_q,
                  has_backward(pass) ? std::min<std::int64_t>(p.seqlen_k, settings.verify_rows + 2) : 0, p.seqlen_k);
  choose_rows(settings.verify_rows);
  return choice;
}

double check_flops(const Problem& p, Pass pass, const SuiteSettings& settings) {
  if (settings.verify == "none") return 0;
  const double every = verification_flops(p, pass);
  if (settings.verify == "all" || every <= settings.verify_max_flops) return every;
  // drawn groups: each the longest sequence, its query heads and one kv head; a backward check runs the group's
  // fp64 forward over every query row (4 x its flops: exact values and bounds), then the chosen rows' checks
  const Problem group = group_of(p, p.seqlen_q, p.seqlen_k);
  const double groups = static_cast<double>(std::min<std::int64_t>(settings.verify_heads, p.batch * p.heads_kv));
  const double rows = std::min(1.0, static_cast<double>(settings.verify_rows + 2) / static_cast<double>(std::max<std::int64_t>(p.seqlen_q, 1)));
  const double chosen = rows * verification_flops(group, pass);
  const double forward_all = has_backward(pass) ? 4 * attention_flops(group, Pass::fwd) : 0;
  return groups * (chosen + forward_all);
}

namespace {

// Adds the last path's deterministic bounds (the fp64 reference's own, appended for fp64 rows) to every other path's
// deterministic and probabilistic bounds, then drops it.
void add_reference_error(reference::GroupCheck& check) {
  const reference::GroupOutputs own = check.bounds.back().deterministic;
  check.bounds.pop_back();
  for (reference::PathBounds& b : check.bounds) {
    for (reference::GroupOutputs* out : {&b.deterministic, &b.probabilistic}) {
      for (auto member : {&reference::GroupOutputs::o, &reference::GroupOutputs::lse, &reference::GroupOutputs::dq,
                          &reference::GroupOutputs::dk, &reference::GroupOutputs::dv}) {
        std::vector<double>& v = out->*member;
        const std::vector<double>& add = own.*member;
        for (std::size_t i = 0; i < v.size() && i < add.size(); ++i) v[i] += add[i];
      }
    }
  }
}

}  // namespace

struct GroupExpectation {
  Group group;
  reference::RowChoice rows;
  reference::GroupCheck check;  // bounds[0]: the variant's path; bounds[1]: the baseline's, when it has one
  HeadOutputs cpu_baseline;     // when the baseline is cpu-standard
};

struct Expectation::Fixed {
  std::map<std::string, TensorFixed> tensors;
};

namespace {

// One head of one tensor at the chosen rows of a group: `rows` their indices in the head, `offset` where the head's
// first chosen row starts in the check's arrays (`member` of GroupOutputs: exact values, upcast, bounds); `local`
// the head within the group, `global` within the problem.
struct HeadSlice {
  const char* tensor;
  std::vector<double> reference::GroupOutputs::* member;
  const GroupExpectation& ge;
  const std::vector<std::int64_t>& rows;
  std::int64_t dim, local, global, offset;
  DType stored;

  // Entry (r, col): its position in the check's arrays, in the head's output, and its problem coordinates.
  [[nodiscard]] std::size_t at(std::size_t r, std::int64_t col) const {
    return static_cast<std::size_t>(offset + static_cast<std::int64_t>(r) * dim + col);
  }
  [[nodiscard]] std::size_t in_fetched(std::size_t r, std::int64_t col) const {  // in fetch(..., rows)
    return static_cast<std::size_t>(static_cast<std::int64_t>(r) * dim + col);
  }
  [[nodiscard]] std::size_t in_head(std::size_t r, std::int64_t col) const {  // in a whole head
    return static_cast<std::size_t>(rows[r] * dim + col);
  }
  [[nodiscard]] std::string coordinates(std::size_t r, std::int64_t col) const {
    const Group& grp = ge.group;
    return std::string_view(tensor) == "lse" ? fmt::format("{},{},{}", grp.b, rows[r], global)
                                             : fmt::format("{},{},{},{}", grp.b, rows[r], global, col);
  }
};

// Visits every head of every tensor of every group, in the one order that numbers the entries (the entry index of
// ErrorAccumulator::add, which breaks ties of the worst entry).
template <class Visit>
void for_each_head(const std::vector<GroupExpectation>& groups, const Problem& p, Pass pass, DType dtype, Visit visit) {
  using reference::GroupOutputs;
  const std::int64_t group = p.group_size(), d = p.head_dim, dv = p.dv();
  for (const GroupExpectation& ge : groups) {
    const auto nsel = static_cast<std::int64_t>(ge.rows.query.size());
    for (std::int64_t j = 0; j < group; ++j) {
      const std::int64_t h = ge.group.g * group + j;
      visit(HeadSlice{"o", &GroupOutputs::o, ge, ge.rows.query, dv, j, h, j * nsel * dv, dtype});
      visit(HeadSlice{"lse", &GroupOutputs::lse, ge, ge.rows.query, 1, j, h, j * nsel, DType::fp32});
      if (has_backward(pass)) visit(HeadSlice{"dq", &GroupOutputs::dq, ge, ge.rows.query, d, j, h, j * nsel * d, dtype});
    }
    if (has_backward(pass)) {
      visit(HeadSlice{"dk", &GroupOutputs::dk, ge, ge.rows.key, d, 0, ge.group.g, 0, dtype});
      visit(HeadSlice{"dv", &GroupOutputs::dv, ge, ge.rows.key, dv, 0, ge.group.g, 0, dtype});
    }
  }
}

// cpu-standard stands in for a GPU baseline that could not run (standard out of memory) by computing whole groups,
// every score of them (it materializes S whatever the mask): its flops for the chosen groups. Above
// kCpuBaselineFlops (a few seconds of the CPU) a row goes without a baseline and its bound judges it: at N = 131072
// one group is 10^12 flops, minutes.
constexpr double kCpuBaselineFlops = 2e11;
double cpu_baseline_flops(const Problem& p, const GroupChoice& choice, Pass pass) {
  double flops = 0;
  for (const Group& g : choice.groups) {
    const Sequence s = p.sequence(g.b);
    Problem dense = group_of(p, s.seqlen_q, s.seqlen_k);
    dense.causal = false;
    dense.window = {};
    flops += attention_flops(dense, pass == Pass::fwd ? Pass::fwd : Pass::fwdbwd);
  }
  return flops;
}

}  // namespace

Expectation::Expectation(const Problem& problem, DType dtype, Pass pass, const InputSpec& inputs, GroupChoice choice,
                         const CheckSubject& subject)
    : problem_(problem), dtype_(dtype), pass_(pass), distribution_(inputs.distribution), choice_(std::move(choice)),
      subject_(subject), fixed_(std::make_unique<Fixed>()) {
  if (choice_.rows.size() != choice_.groups.size()) throw std::logic_error("Expectation: a group without its rows");
  const bool no_gpu_baseline = !subject_.materializing && !subject_.baseline;
  const double cpu_flops = no_gpu_baseline ? cpu_baseline_flops(problem_, choice_, pass_) : 0;
  const bool skip_baseline = cpu_flops > kCpuBaselineFlops;
  for (std::size_t gi = 0; gi < choice_.groups.size(); ++gi) {
    const Group& grp = choice_.groups[gi];
    GroupExpectation ge{grp, choice_.rows[gi], {}, {}};
    // a forward check reads the chosen query rows only, unless cpu-standard runs on the whole group as the baseline
    const bool cpu_baseline = no_gpu_baseline && !skip_baseline;
    const bool only_chosen = !has_backward(pass_) && !cpu_baseline && !choice_.all_rows;
    const reference::GroupInputs in = group_inputs(problem_, grp, inputs, pass_, only_chosen ? &ge.rows.query : nullptr);
    reference::GroupCheckOptions options;
    options.backward = has_backward(pass_);
    // the fp32 upcast where it is cheap: it needs a second forward over every query row when a sampled check has a
    // backward, so it is left out there
    if (choice_.all_rows || !has_backward(pass_)) options.upcast = dtype_;
    options.paths.push_back(subject_.path);
    if (!subject_.materializing && !skip_baseline && subject_.baseline_path) {
      options.paths.push_back(*subject_.baseline_path);
    }
    options.lambda = kBoundLambda;
    options.probabilistic_paths = 1;  // the baseline is judged by its deterministic bound alone
    // fp64 rows: the reference computes in fp64 too, so its own rounding is as large as the variant's; each bound
    // gets the reference's own deterministic bound added (reference/NUMERICS.md §11)
    const bool fp64 = dtype_ == DType::fp64;
    if (fp64) options.paths.push_back(numerics::reference_path(DType::fp64));
    ge.check = reference::check_group(in, ge.rows, options);
    if (fp64) add_reference_error(ge.check);
    if (cpu_baseline) ge.cpu_baseline = run_cpu_baseline(in, dtype_, pass_);
    groups_.push_back(std::move(ge));
  }
  // the largest reference magnitude of each tensor (the guard of max_rel), the same for every check
  for_each_head(groups_, problem_, pass_, dtype_, [&](const HeadSlice& h) {
    double& m = ref_max_[h.tensor];
    const std::vector<double>& exact = h.ge.check.exact.*h.member;
    for (std::size_t r = 0; r < h.rows.size(); ++r) {
      for (std::int64_t col = 0; col < h.dim; ++col) {
        const double x = exact[h.at(r, col)];
        if (std::isfinite(x)) m = std::max(m, std::abs(x));
      }
    }
  });
  // what does not depend on the variant's outputs: the floor, the bounds' maxima, the upcast and the baseline
  for (const auto& [t, m] : ref_max_) {
    TensorFixed& f = fixed_->tensors[t];
    f.baseline = f.upcast = numerics::ErrorAccumulator(m);
  }
  const bool with_baseline = !subject_.materializing && !skip_baseline;
  for_each_head(groups_, problem_, pass_, dtype_, [&](const HeadSlice& h) {
    TensorFixed& f = fixed_->tensors[h.tensor];
    const reference::GroupCheck& c = h.ge.check;
    const std::vector<double>& exact = c.exact.*h.member;
    const std::vector<double>& det = c.bounds.at(0).deterministic.*h.member;
    const std::vector<double>& prob = c.bounds.at(0).probabilistic.*h.member;
    const std::vector<double>* upcast = c.upcast ? &(*c.upcast.*h.member) : nullptr;
    const std::vector<double>* base_det = c.bounds.size() > 1 ? &(c.bounds[1].deterministic.*h.member) : nullptr;
    std::vector<double> base;  // at the chosen rows
    if (with_baseline && subject_.baseline) base = (*subject_.baseline)(h.tensor, h.ge.group.b, h.global, h.rows);
    if (with_baseline && !subject_.baseline) {
      const std::vector<double>& head = h.ge.cpu_baseline.at({h.tensor, h.local});
      base.resize(h.rows.size() * static_cast<std::size_t>(h.dim));
      for (std::size_t r = 0; r < h.rows.size(); ++r)
        for (std::int64_t col = 0; col < h.dim; ++col) base[h.in_fetched(r, col)] = head[h.in_head(r, col)];
    }
    for (std::size_t r = 0; r < h.rows.size(); ++r) {
      for (std::int64_t col = 0; col < h.dim; ++col) {
        const std::size_t i = h.at(r, col);
        const double ref = exact[i];
        const std::int64_t entry = f.count++;
        f.floor = std::max(f.floor, 2 * numerics::one_step_noise(ref, h.stored));
        f.bound = std::max(f.bound, det[i]);
        f.bound_prob = std::max(f.bound_prob, prob[i]);
        if (upcast) {
          f.has_upcast = true;
          f.upcast.add((*upcast)[i], ref, entry);
        }
        if (with_baseline) {
          f.has_baseline = true;
          const double b = base[h.in_fetched(r, col)];
          f.baseline.add(b, ref, entry);
          const double bdiff = numerics::abs_difference(b, ref);
          if (base_det && !(bdiff <= (*base_det)[i]) && f.baseline_above++ == 0) {
            f.baseline_above_index = h.coordinates(r, col);
            f.baseline_above_error = bdiff;
            f.baseline_above_limit = (*base_det)[i];
          }
        }
      }
    }
  });
  if (!choice_.groups.empty() && skip_baseline) {
    choice_.description += fmt::format(
        "; no baseline (standard could not run; cpu-standard over the groups would be {:.0f} GFLOP): the bound judges",
        cpu_flops / 1e9);
  } else if (!choice_.groups.empty() && !subject_.materializing) {
    choice_.description += subject_.baseline ? "; baseline: standard on the GPU" : "; baseline: cpu-standard";
  }
  if (!choice_.groups.empty() && subject_.materializing) choice_.description += "; no baseline (materializing): the bound judges";
}

Expectation::~Expectation() = default;

Verification Expectation::check(const FetchOutput& fetch) const {
  Verification result;
  result.verified_heads = choice_.description;
  result.verified_rows = choice_.rows_description;
  result.data_path = subject_.path.summary;
  if (groups_.empty()) return result;

  std::map<std::string, TensorAccumulator> acc;
  std::map<std::string, std::int64_t> next_entry;
  for (const auto& [t, m] : ref_max_) acc[t].error = numerics::ErrorAccumulator(m);
  for_each_head(groups_, problem_, pass_, dtype_, [&](const HeadSlice& h) {
    TensorAccumulator& a = acc[h.tensor];
    const reference::PathBounds& own = h.ge.check.bounds.at(0);
    const std::vector<double>& exact = h.ge.check.exact.*h.member;
    const std::vector<double>& det = own.deterministic.*h.member;
    const std::vector<double>& prob = own.probabilistic.*h.member;
    const std::vector<double> out = fetch(h.tensor, h.ge.group.b, h.global, h.rows);
    std::int64_t& entry = next_entry[h.tensor];
    for (std::size_t r = 0; r < h.rows.size(); ++r) {
      for (std::int64_t col = 0; col < h.dim; ++col) {
        const std::size_t i = h.at(r, col);
        const double ref = exact[i], x = out[h.in_fetched(r, col)];
        if (a.error.add(x, ref, entry++)) a.worst_index = h.coordinates(r, col);
        const double diff = numerics::abs_difference(x, ref);
        if (!(diff <= det[i]) && a.above++ == 0) {
          a.above_index = h.coordinates(r, col);
          a.above_error = diff;
          a.above_limit = det[i];
        }
        if (!(diff <= prob[i])) a.above_prob++;
      }
    }
  });

  auto fail = [&](std::string why) {
    if (result.pass) result.failure = std::move(why);
    result.pass = false;
  };
  for (const char* name : kOutputTensors) {
    const auto it = acc.find(name);
    const auto fixed = fixed_->tensors.find(name);
    if (it == acc.end() || fixed == fixed_->tensors.end() || fixed->second.count == 0) continue;
    const TensorAccumulator& a = it->second;
    const TensorFixed& f = fixed->second;
    TensorVerdict v;
    v.error = a.error.finish();
    v.worst_index = a.worst_index;
    if (f.has_baseline) v.baseline = f.baseline.finish();
    if (f.has_upcast) v.upcast = f.upcast.finish();
    v.floor = f.floor;
    v.bound = f.bound;
    v.bound_prob = f.bound_prob;
    v.above_bound = a.above;
    v.above_bound_index = a.above_index;
    v.above_bound_error = a.above_error;
    v.above_bound_limit = a.above_limit;
    v.prob_exceed = static_cast<double>(a.above_prob) / static_cast<double>(f.count);
    const double k = numerics::rule_factor(name);
    if (!std::isfinite(v.error.max_abs)) {
      v.pass = false;
      fail(fmt::format("{} is not finite at {}", name, v.worst_index));
    }
    if (v.baseline && !std::isfinite(v.baseline->max_abs)) {
      v.pass = false;
      fail(fmt::format("the baseline's {} is not finite: the rule has no baseline to compare with", name));
    } else if (v.baseline && f.baseline_above > 0) {
      v.pass = false;
      fail(fmt::format("the baseline's {} error {:.3g} at {} exceeds its own deterministic bound {:.3g} ({} entries)",
                       name, f.baseline_above_error, f.baseline_above_index, f.baseline_above_limit, f.baseline_above));
    } else if (v.baseline) {
      v.rule_pass = numerics::rule_holds(v.error.max_abs, v.baseline->max_abs, v.floor, k);
      if (!*v.rule_pass && numerics::rule_judges(dtype_, subject_.path, distribution_)) {
        v.pass = false;
        fail(fmt::format("{} max abs error {:.3g} at {} > {} x baseline {:.3g} + floor {:.3g}", name, v.error.max_abs,
                         v.worst_index, k, v.baseline->max_abs, v.floor));
      }
    }
    if (a.above > 0 && std::isfinite(v.error.max_abs)) {
      v.pass = false;
      fail(fmt::format("{} error {:.3g} at {} exceeds its deterministic bound {:.3g} ({} of {} entries above)", name,
                       a.above_error, a.above_index, a.above_limit, a.above, f.count));
    }
    result.tensors[name] = v;
  }
  return result;
}

Verification worse(const Verification& a, const Verification& b) {
  Verification w = a;
  w.pass = a.pass && b.pass;
  if (a.pass && !b.pass) w.failure = b.failure;
  for (const auto& [name, e] : b.tensors) {
    const auto it = a.tensors.find(name);
    const bool both_pass = (it == a.tensors.end() || it->second.pass) && e.pass;
    if (it == a.tensors.end() || e.error.max_abs > it->second.error.max_abs) w.tensors[name] = e;
    w.tensors[name].pass = both_pass;
  }
  return w;
}

}  // namespace flashlab::harness
