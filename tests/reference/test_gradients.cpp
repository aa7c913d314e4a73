// Backward against central finite differences of L = sum(dO * O), in double.
//
// Step h = 1e-5 on inputs of unit scale: the truncation error h^2 |f'''| / 6 is ~1e-11, and because only the
// outputs a perturbation touches change (the reference is deterministic with one worker), the difference
// sum(dO * (O+ - O-)) carries a rounding error of ~1e-16 per touched output, ~1e-11 after division by 2h.
// Both are far below the required max-norm relative error of 1e-6.
#include <random>
#include <string>

#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;
using flashlab::test::Data;

namespace {

constexpr double kStep = 1e-5;
constexpr double kTolerance = 1e-6;
constexpr std::size_t kAllElementsUpTo = 512;  // smaller tensors are checked everywhere
constexpr std::size_t kSamples = 48;           // larger ones at this many random elements
// Inputs and dO are unit normals, so a gradient that does not vanish has entries of order 0.1 to 10.
constexpr double kGradientFloor = 1e-3;

struct Case {
  std::string name;
  Problem problem;
};

std::vector<Case> cases(std::int64_t n, std::int64_t d) {
  Problem base;
  base.batch = 2;
  base.heads = 2;
  base.heads_kv = 2;
  base.seqlen_q = base.seqlen_k = n;
  base.head_dim = d;
  std::vector<Case> out;
  out.push_back({"dense", base});
  Problem causal = base;
  causal.causal = true;
  out.push_back({"causal", causal});
  Problem window = base;
  window.window = {3, 2};
  out.push_back({"window(3,2)", window});
  Problem causal_window = causal;
  causal_window.window = {4, -1};
  out.push_back({"causal+window(4,-1)", causal_window});
  Problem gqa = base;
  gqa.batch = 1;
  gqa.heads = 4;
  gqa.heads_kv = 1;
  out.push_back({"gqa 4:1", gqa});
  Problem varlen = Problem::varlen(2, 1, d, {n, 0, (n + 1) / 2, 3}, {n, 4, (n + 3) / 2, 0});
  varlen.causal = true;
  out.push_back({"varlen causal with empty entries, gqa 2:1", varlen});
  Problem longer_k = causal;
  longer_k.seqlen_k = n + 13;
  out.push_back({"causal N_k = N_q + 13", longer_k});
  Problem longer_q = causal;
  longer_q.seqlen_q = n + 9;  // the first 9 rows see no key
  out.push_back({"causal N_q = N_k + 9", longer_q});
  Problem scaled = base;
  scaled.seqlen_k = n + 5;
  scaled.softmax_scale = 0.7;
  out.push_back({"N_k = N_q + 5, scale 0.7", scaled});
  Problem padded = causal;
  padded.batch = 3;
  padded.heads = 4;
  padded.key_padding = KeyPadding::left;
  padded.valid_lengths = {n, 0, (n + 1) / 2};
  out.push_back({"causal left key padding with an empty entry, gqa 2:1", padded});
  return out;
}

// sum(dO * (O_plus - O_minus)) / (2h) after perturbing element `index` of `tensor` by +-h.
double central_difference(Data& work, const Data& base, std::vector<double>& tensor, std::size_t index,
                          const reference::Options& options) {
  const double x0 = tensor[index];
  tensor[index] = x0 + kStep;
  work.run_forward(options);
  const std::vector<double> o_plus = work.o.values();
  tensor[index] = x0 - kStep;
  work.run_forward(options);
  tensor[index] = x0;
  double difference = 0;
  for (std::size_t i = 0; i < o_plus.size(); ++i) {
    difference += base.d_out.values()[i] * (o_plus[i] - work.o.values()[i]);
  }
  return difference / (2 * kStep);
}

// Max-norm relative error of `analytic` against finite differences, over all or sampled elements.
double gradient_error(Data& work, const Data& base, std::vector<double>& input, const std::vector<double>& analytic,
                      const reference::Options& options, std::mt19937_64& rng) {
  std::vector<std::size_t> indices;
  if (input.size() <= kAllElementsUpTo) {
    for (std::size_t i = 0; i < input.size(); ++i) indices.push_back(i);
  } else {
    std::uniform_int_distribution<std::size_t> pick(0, input.size() - 1);
    for (std::size_t s = 0; s < kSamples; ++s) indices.push_back(pick(rng));
  }
  // The scale is the largest gradient entry, floored at kGradientFloor: where the whole gradient vanishes
  // (one visible key makes P = 1 whatever Q and K are), it is rounding noise and cannot be a scale.
  double scale = kGradientFloor, worst = 0;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  for (std::size_t index : indices) {
    worst = std::max(worst, std::abs(central_difference(work, base, input, index, options) - analytic[index]));
  }
  return worst / scale;
}

}  // namespace

TEST_CASE("gradients match central finite differences to 1e-6", "[reference][gradient]") {
  const std::int64_t n = GENERATE(1, 17, 97);
  const std::int64_t d = GENERATE(8, 40);
  const reference::Options options{.row_block = 32, .workers = 1};
  for (const Case& c : cases(n, d)) {
    INFO(c.name << ": " << c.problem.describe());
    const Data base = test::solved(c.problem, 1000 + static_cast<std::uint64_t>(n * d), options);
    Data work = base;
    std::mt19937_64 rng(static_cast<std::uint64_t>(n * 131 + d));
    CHECK(test::all_finite(base.dq.values()));
    CHECK(test::all_finite(base.dk.values()));
    CHECK(test::all_finite(base.dv.values()));
    CHECK(gradient_error(work, base, work.q.values(), base.dq.values(), options, rng) <= kTolerance);
    CHECK(gradient_error(work, base, work.k.values(), base.dk.values(), options, rng) <= kTolerance);
    CHECK(gradient_error(work, base, work.v.values(), base.dv.values(), options, rng) <= kTolerance);
  }
}

TEST_CASE("gradients with dropout match central finite differences under the same mask", "[reference][gradient][dropout]") {
  const std::int64_t n = GENERATE(17, 97);
  const reference::Options options{.row_block = 32, .workers = 1};
  for (Case c : cases(n, 8)) {
    c.problem.dropout = {0.3, 1234, 2};
    INFO(c.name << ": " << c.problem.describe());
    const Data base = test::solved(c.problem, 2000 + static_cast<std::uint64_t>(n), options);
    Data work = base;
    std::mt19937_64 rng(static_cast<std::uint64_t>(n * 7 + 1));
    CHECK(gradient_error(work, base, work.q.values(), base.dq.values(), options, rng) <= kTolerance);
    CHECK(gradient_error(work, base, work.k.values(), base.dk.values(), options, rng) <= kTolerance);
    CHECK(gradient_error(work, base, work.v.values(), base.dv.values(), options, rng) <= kTolerance);
  }
}
