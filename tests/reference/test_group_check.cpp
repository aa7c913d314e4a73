// check_group: exact values at chosen entries equal the blocked reference's, sampled entries equal the full
// check's, the fp32 upcast is an fp32-accurate computation, bounds order by precision and grow with the data, and
// bad input is refused.
#include <algorithm>
#include <cmath>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/numerics.hpp"
#include "flashlab/reference/group_check.hpp"
#include "support.hpp"

namespace flashlab::test {
namespace {

using reference::GroupCheckOptions;
using reference::GroupInputs;
using reference::RowChoice;

// A group problem (one sequence, G query heads, one kv head) and its inputs from the generator.
struct GroupCase {
  GroupInputs inputs;
  Data data;  // the blocked reference on the same inputs, forward and backward done
};

Problem group_problem(std::int64_t heads, std::int64_t nq, std::int64_t nk, std::int64_t d, bool causal, Window window) {
  Problem p;
  p.heads = heads;
  p.seqlen_q = nq;
  p.seqlen_k = nk;
  p.head_dim = d;
  p.causal = causal;
  p.window = window;
  p.softmax_scale = p.scale();
  return p;
}

GroupCase make_case(const Problem& p, DType dtype, std::uint64_t seed) {
  Data data(p);
  data.randomize({.seed = seed, .distribution = Distribution::normal, .dtype = dtype});
  data.run_forward();
  data.run_backward();
  GroupInputs in;
  in.problem = p;
  const std::int64_t g = p.heads, nq = p.seqlen_q, nk = p.seqlen_k, d = p.head_dim, dv = p.dv();
  for (std::int64_t h = 0; h < g; ++h) {
    for (std::int64_t n = 0; n < nq; ++n) {
      for (std::int64_t c = 0; c < d; ++c) in.q.push_back(data.q(0, n, h, c));
    }
  }
  for (std::int64_t h = 0; h < g; ++h) {
    for (std::int64_t n = 0; n < nq; ++n) {
      for (std::int64_t c = 0; c < dv; ++c) in.d_out.push_back(data.d_out(0, n, h, c));
    }
  }
  for (std::int64_t n = 0; n < nk; ++n) {
    for (std::int64_t c = 0; c < d; ++c) in.k.push_back(data.k(0, n, 0, c));
    for (std::int64_t c = 0; c < dv; ++c) in.v.push_back(data.v(0, n, 0, c));
  }
  return {std::move(in), std::move(data)};
}

RowChoice every_row(const Problem& p) {
  RowChoice r;
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) r.query.push_back(i);
  for (std::int64_t j = 0; j < p.seqlen_k; ++j) r.key.push_back(j);
  return r;
}

std::vector<Problem> group_problems() {
  return {group_problem(1, 17, 17, 16, false, {}), group_problem(3, 40, 129, 24, true, {}),
          group_problem(2, 150, 33, 8, false, {8, 3}), group_problem(4, 1, 97, 32, true, {}),
          group_problem(2, 33, 33, 16, false, {0, 0})};
}

}  // namespace

TEST_CASE("check_group's exact values at every entry equal the blocked reference", "[reference][group_check]") {
  for (const Problem& p : group_problems()) {
    INFO(p.describe());
    const GroupCase c = make_case(p, DType::fp64, 5);
    GroupCheckOptions options;
    options.backward = true;
    const reference::GroupCheck check = reference::check_group(c.inputs, every_row(p), options);
    const std::int64_t g = p.heads, nq = p.seqlen_q, nk = p.seqlen_k, d = p.head_dim, dv = p.dv();
    double worst = 0, scale = 0;
    auto compare = [&](double got, double want) {
      if (std::isinf(want)) {
        CHECK(got == want);
        return;
      }
      worst = std::max(worst, std::abs(got - want));
      scale = std::max(scale, std::abs(want));
    };
    for (std::int64_t h = 0; h < g; ++h) {
      for (std::int64_t i = 0; i < nq; ++i) {
        compare(check.exact.lse[static_cast<std::size_t>(h * nq + i)], c.data.lse(0, h, i));
        for (std::int64_t col = 0; col < dv; ++col) compare(check.exact.o[static_cast<std::size_t>((h * nq + i) * dv + col)], c.data.o(0, i, h, col));
        for (std::int64_t col = 0; col < d; ++col) compare(check.exact.dq[static_cast<std::size_t>((h * nq + i) * d + col)], c.data.dq(0, i, h, col));
      }
    }
    for (std::int64_t j = 0; j < nk; ++j) {
      for (std::int64_t col = 0; col < d; ++col) compare(check.exact.dk[static_cast<std::size_t>(j * d + col)], c.data.dk(0, j, 0, col));
      for (std::int64_t col = 0; col < dv; ++col) compare(check.exact.dv[static_cast<std::size_t>(j * dv + col)], c.data.dv(0, j, 0, col));
    }
    CHECK(worst <= 1e-12 * std::max(1.0, scale));
  }
}

TEST_CASE("sampled entries equal the full check's at the same entries, values and bounds", "[reference][group_check]") {
  const Problem p = group_problem(2, 300, 260, 16, true, {});
  const GroupCase c = make_case(p, DType::bf16, 8);
  GroupCheckOptions options;
  options.backward = true;
  options.paths = {numerics::materializing_path(DType::bf16, DType::fp32, true, 3 * unit_roundoff(DType::fp32), "std")};
  const reference::GroupCheck full = reference::check_group(c.inputs, every_row(p), options);
  const RowChoice some{{0, 5, 128, 299}, {0, 77, 259}};
  const reference::GroupCheck part = reference::check_group(c.inputs, some, options);
  const std::int64_t nq = p.seqlen_q, d = p.head_dim, dv = p.dv();
  for (std::int64_t h = 0; h < p.heads; ++h) {
    for (std::size_t r = 0; r < some.query.size(); ++r) {
      const std::int64_t i = some.query[r], at = h * static_cast<std::int64_t>(some.query.size()) + static_cast<std::int64_t>(r);
      CHECK(part.exact.lse[static_cast<std::size_t>(at)] == Approx(full.exact.lse[static_cast<std::size_t>(h * nq + i)]).epsilon(1e-13));
      for (std::int64_t col = 0; col < d; ++col) {
        const double want = full.exact.dq[static_cast<std::size_t>((h * nq + i) * d + col)];
        CHECK(part.exact.dq[static_cast<std::size_t>(at * d + col)] == Approx(want).epsilon(1e-12).margin(1e-14));
        // O and dQ bounds at a chosen row are per-entry bounds of that row: the same in both checks
        CHECK(part.bounds[0].deterministic.dq[static_cast<std::size_t>(at * d + col)] >= 0);
      }
      for (std::int64_t col = 0; col < dv; ++col) {
        CHECK(part.bounds[0].deterministic.o[static_cast<std::size_t>(at * dv + col)] ==
              Approx(full.bounds[0].deterministic.o[static_cast<std::size_t>((h * nq + i) * dv + col)]).epsilon(1e-12));
      }
    }
  }
  for (std::size_t r = 0; r < some.key.size(); ++r) {
    const std::int64_t j = some.key[r];
    for (std::int64_t col = 0; col < dv; ++col) {
      CHECK(part.exact.dv[r * static_cast<std::size_t>(dv) + static_cast<std::size_t>(col)] ==
            Approx(full.exact.dv[static_cast<std::size_t>(j * dv + col)]).epsilon(1e-12).margin(1e-14));
      // a sampled check bounds the other rows' forward errors row by row (looser): its dV bound is not smaller
      CHECK(part.bounds[0].deterministic.dv[r * static_cast<std::size_t>(dv) + static_cast<std::size_t>(col)] >=
            full.bounds[0].deterministic.dv[static_cast<std::size_t>(j * dv + col)] * (1 - 1e-12));
    }
  }
}

TEST_CASE("check_group: a masked key's value never reaches O or dQ, however large", "[reference][group_check]") {
  // Causal: key 31 is kept by row 31 only, yet lies in the key span of the blocks and samples that hold rows 28-31. A
  // masked weight must be an exact 0 (a subnormal weight times V = 1e300 would move those rows by 1e-8).
  const Problem p = group_problem(1, 32, 32, 8, true, {});
  GroupCase c = make_case(p, DType::fp64, 23);
  GroupCheckOptions options;
  options.backward = true;
  for (const RowChoice& rows : {every_row(p), RowChoice{{0, 29, 30, 31}, {3, 31}}}) {
    GroupInputs large = c.inputs, plain = c.inputs;
    for (std::int64_t col = 0; col < p.dv(); ++col) {
      large.v[static_cast<std::size_t>(31 * p.dv() + col)] = 1e300;
      plain.v[static_cast<std::size_t>(31 * p.dv() + col)] = 0;
    }
    const reference::GroupCheck a = reference::check_group(large, rows, options);
    const reference::GroupCheck b = reference::check_group(plain, rows, options);
    for (std::size_t r = 0; r + 1 < rows.query.size(); ++r) {  // every chosen row but row 31
      INFO("row " << rows.query[r]);
      CHECK(a.exact.lse[r] == b.exact.lse[r]);
      for (std::int64_t col = 0; col < p.dv(); ++col) {
        CHECK(a.exact.o[r * static_cast<std::size_t>(p.dv()) + static_cast<std::size_t>(col)] ==
              b.exact.o[r * static_cast<std::size_t>(p.dv()) + static_cast<std::size_t>(col)]);
      }
      for (std::int64_t col = 0; col < p.head_dim; ++col) {
        CHECK(a.exact.dq[r * static_cast<std::size_t>(p.head_dim) + static_cast<std::size_t>(col)] ==
              b.exact.dq[r * static_cast<std::size_t>(p.head_dim) + static_cast<std::size_t>(col)]);
      }
    }
  }
}

TEST_CASE("the fp32 upcast is accurate to fp32 and rounded to the dtype asked for", "[reference][group_check]") {
  const Problem p = group_problem(2, 64, 80, 32, false, {});
  const GroupCase c = make_case(p, DType::fp16, 3);
  GroupCheckOptions options;
  options.backward = true;
  options.upcast = DType::fp16;
  const reference::GroupCheck check = reference::check_group(c.inputs, every_row(p), options);
  REQUIRE(check.upcast.has_value());
  for (std::size_t i = 0; i < check.exact.o.size(); ++i) {
    const double o = check.upcast->o[i];
    CHECK(o == round_to(o, DType::fp16));
    // fp16 rounding (u = 2^-11) plus fp32 noise
    CHECK(std::abs(o - check.exact.o[i]) <= unit_roundoff(DType::fp16) * std::abs(check.exact.o[i]) + 1e-5);
  }
  for (std::size_t i = 0; i < check.exact.dk.size(); ++i) {
    CHECK(std::abs(check.upcast->dk[i] - check.exact.dk[i]) <= unit_roundoff(DType::fp16) * std::abs(check.exact.dk[i]) + 1e-4);
  }
}

TEST_CASE("bounds order by precision and the probabilistic one is below the deterministic one", "[reference][group_check]") {
  const Problem p = group_problem(2, 96, 96, 32, true, {});
  const GroupCase c = make_case(p, DType::bf16, 4);
  GroupCheckOptions options;
  options.backward = true;
  const double u32 = unit_roundoff(DType::fp32);
  for (const DType dtype : {DType::bf16, DType::fp16, DType::fp32}) {
    options.paths.push_back(numerics::materializing_path(dtype, DType::fp32, true, 3 * u32, name(dtype).data()));
  }
  const reference::GroupCheck check = reference::check_group(c.inputs, every_row(p), options);
  REQUIRE(check.bounds.size() == 3);
  auto max_of = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  for (const auto member : {&reference::GroupOutputs::o, &reference::GroupOutputs::lse, &reference::GroupOutputs::dq,
                            &reference::GroupOutputs::dk, &reference::GroupOutputs::dv}) {
    const double bf16 = max_of(check.bounds[0].deterministic.*member), fp16 = max_of(check.bounds[1].deterministic.*member),
                 fp32 = max_of(check.bounds[2].deterministic.*member);
    CHECK(bf16 > 4 * fp16);  // u_bf16 / u_fp16 = 8
    CHECK(fp16 > 4 * fp32);
    for (const reference::PathBounds& b : check.bounds) {
      const std::vector<double>& det = b.deterministic.*member;
      const std::vector<double>& prob = b.probabilistic.*member;
      for (std::size_t i = 0; i < det.size(); ++i) CHECK(prob[i] <= det[i]);
    }
  }
}

TEST_CASE("check_group refuses inputs that do not match the problem", "[reference][group_check]") {
  const Problem p = group_problem(2, 8, 8, 8, false, {});
  GroupCase c = make_case(p, DType::fp64, 1);
  GroupInputs short_q = c.inputs;
  short_q.q.pop_back();
  CHECK_THROWS_AS(reference::check_group(short_q, every_row(p), {}), InvalidProblem);
  CHECK_THROWS_AS(reference::check_group(c.inputs, RowChoice{{8}, {}}, {}), InvalidProblem);
  GroupInputs batched = c.inputs;
  batched.problem.batch = 2;
  CHECK_THROWS_AS(reference::check_group(batched, every_row(p), {}), InvalidProblem);
}

}  // namespace flashlab::test
