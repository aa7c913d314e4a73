// Invariances of exact attention that the blocked, parallel reference must keep.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <numeric>
#include <string_view>
#include <utility>
#include <vector>
#include <random>

#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;
using flashlab::test::Data;
using flashlab::test::max_norm_relative;

namespace {

// Each output of two solved problems, max-norm relative difference.
struct Differences {
  double o, lse, dq, dk, dv;
};
Differences differences(const Data& a, const Data& b) {
  return {max_norm_relative(a.o.values(), b.o.values()), test::lse_error(a.lse.values(), b.lse.values()),
          max_norm_relative(a.dq.values(), b.dq.values()), max_norm_relative(a.dk.values(), b.dk.values()),
          max_norm_relative(a.dv.values(), b.dv.values())};
}

}  // namespace

TEST_CASE("permuting keys and values together changes nothing (no mask)", "[reference][invariance]") {
  const std::int64_t n = GENERATE(17, 97, 129);
  Problem p;
  p.batch = 2;
  p.heads = 4;
  p.heads_kv = 2;
  p.seqlen_q = n;
  p.seqlen_k = n + 3;
  p.head_dim = 40;
  const Data base = test::solved(p, 21);
  Data permuted(p);
  permuted.randomize({.seed = 21});
  std::vector<std::int64_t> perm(static_cast<std::size_t>(p.seqlen_k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(7));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t j = 0; j < p.seqlen_k; ++j) {
      for (std::int64_t g = 0; g < p.heads_kv; ++g) {
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          permuted.k(b, perm[j], g, c) = base.k(b, j, g, c);
          permuted.v(b, perm[j], g, c) = base.v(b, j, g, c);
        }
      }
    }
  }
  permuted.run_forward();
  permuted.run_backward();
  // Sums over keys are taken in another order: differences are rounding, ~1e-16 relative.
  CHECK(max_norm_relative(permuted.o.values(), base.o.values()) <= 1e-13);
  CHECK(test::lse_error(permuted.lse.values(), base.lse.values()) <= 1e-13);
  CHECK(max_norm_relative(permuted.dq.values(), base.dq.values()) <= 1e-13);
  std::vector<double> dk_back(base.dk.values().size()), dv_back(base.dv.values().size());
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t j = 0; j < p.seqlen_k; ++j) {
      for (std::int64_t g = 0; g < p.heads_kv; ++g) {
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          dk_back[static_cast<std::size_t>(base.dk.view().offset(b, j, g, c))] = permuted.dk(b, perm[j], g, c);
          dv_back[static_cast<std::size_t>(base.dv.view().offset(b, j, g, c))] = permuted.dv(b, perm[j], g, c);
        }
      }
    }
  }
  CHECK(max_norm_relative(dk_back, base.dk.values()) <= 1e-13);
  CHECK(max_norm_relative(dv_back, base.dv.values()) <= 1e-13);
}

TEST_CASE("GQA equals repeating the kv heads, dK and dV sum over the group", "[reference][invariance]") {
  const bool causal = GENERATE(false, true);
  const std::int64_t heads_kv = GENERATE(1, 2);  // MQA and GQA 4:1
  Problem gqa;
  gqa.batch = 2;
  gqa.heads = 8;
  gqa.heads_kv = heads_kv;
  gqa.seqlen_q = 97;
  gqa.seqlen_k = 129;
  gqa.head_dim = 40;
  gqa.causal = causal;
  const Data grouped = test::solved(gqa, 31);
  Problem full = gqa;
  full.heads_kv = gqa.heads;
  Data repeated(full);
  repeated.randomize({.seed = 31});  // Q and dO have the same shapes, hence the same values
  const std::int64_t group = gqa.heads / heads_kv;
  for (std::int64_t b = 0; b < gqa.batch; ++b) {
    for (std::int64_t j = 0; j < gqa.seqlen_k; ++j) {
      for (std::int64_t h = 0; h < gqa.heads; ++h) {
        for (std::int64_t c = 0; c < gqa.head_dim; ++c) {
          repeated.k(b, j, h, c) = grouped.k(b, j, h / group, c);
          repeated.v(b, j, h, c) = grouped.v(b, j, h / group, c);
        }
      }
    }
  }
  repeated.run_forward();
  repeated.run_backward();
  // Per query head the same products in the same order: O, LSE and dQ agree exactly.
  CHECK(max_norm_relative(grouped.o.values(), repeated.o.values()) == 0.0);
  CHECK(test::lse_error(grouped.lse.values(), repeated.lse.values()) == 0.0);
  CHECK(max_norm_relative(grouped.dq.values(), repeated.dq.values()) == 0.0);
  // dK, dV of a kv head: the sum over its query heads (accumulated in another order: rounding only).
  std::vector<double> dk_sum(grouped.dk.values().size(), 0.0), dv_sum(grouped.dv.values().size(), 0.0);
  for (std::int64_t b = 0; b < gqa.batch; ++b) {
    for (std::int64_t j = 0; j < gqa.seqlen_k; ++j) {
      for (std::int64_t h = 0; h < gqa.heads; ++h) {
        for (std::int64_t c = 0; c < gqa.head_dim; ++c) {
          dk_sum[static_cast<std::size_t>(grouped.dk.view().offset(b, j, h / group, c))] += repeated.dk(b, j, h, c);
          dv_sum[static_cast<std::size_t>(grouped.dv.view().offset(b, j, h / group, c))] += repeated.dv(b, j, h, c);
        }
      }
    }
  }
  CHECK(max_norm_relative(grouped.dk.values(), dk_sum) <= 1e-13);
  CHECK(max_norm_relative(grouped.dv.values(), dv_sum) <= 1e-13);
}

TEST_CASE("a varlen batch equals separate calls per sequence", "[reference][invariance]") {
  const bool causal = GENERATE(false, true);
  const std::vector<std::int64_t> lengths_q{17, 0, 97, 1, 5};
  const std::vector<std::int64_t> lengths_k{23, 6, 97, 0, 129};
  Problem p = Problem::varlen(4, 2, 40, lengths_q, lengths_k);
  p.causal = causal;
  const Data batch = test::solved(p, 41);
  for (std::size_t b = 0; b < lengths_q.size(); ++b) {
    Problem single;
    single.heads = p.heads;
    single.heads_kv = p.heads_kv;
    single.head_dim = p.head_dim;
    single.seqlen_q = lengths_q[b];
    single.seqlen_k = lengths_k[b];
    single.causal = causal;
    Data one(single);
    const Sequence s = p.sequence(static_cast<std::int64_t>(b));
    auto copy_rows = [](const Tensor<double, 4>& from, std::int64_t offset, Tensor<double, 4>& to) {
      for (std::int64_t i = 0; i < to.shape()[1]; ++i)
        for (std::int64_t h = 0; h < to.shape()[2]; ++h)
          for (std::int64_t c = 0; c < to.shape()[3]; ++c) to(0, i, h, c) = from(0, offset + i, h, c);
    };
    copy_rows(batch.q, s.q_offset, one.q);
    copy_rows(batch.d_out, s.q_offset, one.d_out);
    copy_rows(batch.k, s.k_offset, one.k);
    copy_rows(batch.v, s.k_offset, one.v);
    one.run_forward();
    one.run_backward();
    INFO("sequence " << b << ": " << single.describe());
    // Row blocks start at each sequence's first row in both: the same products, the same bits.
    for (std::int64_t i = 0; i < single.seqlen_q; ++i) {
      for (std::int64_t h = 0; h < p.heads; ++h) {
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          CHECK(one.o(0, i, h, c) == batch.o(0, s.q_offset + i, h, c));
          CHECK(one.dq(0, i, h, c) == batch.dq(0, s.q_offset + i, h, c));
        }
        CHECK(one.lse(0, h, i) == batch.lse(0, h, s.q_offset + i));
      }
    }
    for (std::int64_t j = 0; j < single.seqlen_k; ++j) {
      for (std::int64_t g = 0; g < p.heads_kv; ++g) {
        for (std::int64_t c = 0; c < p.head_dim; ++c) {
          CHECK(std::abs(one.dk(0, j, g, c) - batch.dk(0, s.k_offset + j, g, c)) <=
                1e-14 * std::abs(one.dk(0, j, g, c)) + 1e-300);
          CHECK(std::abs(one.dv(0, j, g, c) - batch.dv(0, s.k_offset + j, g, c)) <=
                1e-14 * std::abs(one.dv(0, j, g, c)) + 1e-300);
        }
      }
    }
  }
}

TEST_CASE("row block size and worker count change results by less than 1e-14", "[reference][invariance]") {
  const bool causal = GENERATE(false, true);
  Problem p;
  p.batch = 1;
  p.heads = 3;
  p.heads_kv = 1;
  p.seqlen_q = 257;
  p.seqlen_k = 300;
  p.head_dim = 40;
  p.causal = causal;
  p.window = {causal ? 100 : -1, -1};
  const Data base = test::solved(p, 51, {.row_block = 128, .workers = 1});
  for (const reference::Options options : {reference::Options{1, 1}, reference::Options{7, 3},
                                           reference::Options{64, 2}, reference::Options{1000, 5},
                                           reference::Options{128, 8}}) {
    INFO("row_block " << options.row_block << ", workers " << options.workers);
    const Data other = test::solved(p, 51, options);
    const Differences diff = differences(other, base);
    CHECK(diff.o <= 1e-14);
    CHECK(diff.lse <= 1e-14);
    CHECK(diff.dq <= 1e-14);
    CHECK(diff.dk <= 1e-14);
    CHECK(diff.dv <= 1e-14);
  }
}

// Workspace `shift` bytes past a 64-byte boundary: the reference's scratch at a chosen alignment.
class ShiftedAllocator final : public Allocator {
 public:
  explicit ShiftedAllocator(std::size_t shift) : shift_(shift) {}
  void* allocate(std::size_t bytes, std::string_view) override {
    void* base = std::aligned_alloc(64, (bytes + shift_ + 63) / 64 * 64);
    if (base == nullptr) throw std::bad_alloc();
    bases_.emplace_back(base, static_cast<char*>(base) + shift_);
    return bases_.back().second;
  }
  void release(void* pointer) noexcept override {
    for (auto it = bases_.begin(); it != bases_.end(); ++it) {
      if (it->second == pointer) {
        std::free(it->first);
        bases_.erase(it);
        return;
      }
    }
  }

 private:
  std::size_t shift_;
  std::vector<std::pair<void*, void*>> bases_;
};

// The reference is the ground truth: the same values give the same bits wherever they are stored. The scratch, the
// inputs and the outputs move by 8 to 56 bytes against 32-byte packets; Eigen's exp() and row sums start at the
// first aligned packet, which moved the last bit of O (of up to 5% of its entries) before the reference took them
// in an address-independent order.
TEST_CASE("the reference gives the same bits at any address of its tensors", "[reference][invariance]") {
  Problem p;
  p.batch = 2;
  p.heads = 4;
  p.heads_kv = 2;
  p.seqlen_q = 33;
  p.seqlen_k = 47;
  p.head_dim = 16;
  p.causal = true;
  ShiftedAllocator aligned(0);
  reference::Options at_zero;
  at_zero.workspace = &aligned;
  const Data base = test::solved(p, 5, at_zero);
  for (const std::size_t shift : {1, 2, 3, 5, 7}) {
    INFO("shifted by " << shift << " doubles");
    // copies of Q, K, V and room for O, LSE `shift` elements past a fresh allocation; scratch as far off 64 bytes
    const auto shifted = [shift](const std::vector<double>& values) {
      std::vector<double> storage(values.size() + shift);
      std::copy(values.begin(), values.end(), storage.begin() + static_cast<std::ptrdiff_t>(shift));
      return storage;
    };
    std::vector<double> q = shifted(base.q.values()), k = shifted(base.k.values()), v = shifted(base.v.values());
    std::vector<double> o(base.o.values().size() + shift), lse(base.lse.values().size() + shift);
    reference::ForwardArgs<double> args{{q.data() + shift, base.q.shape()}, {k.data() + shift, base.k.shape()},
                                        {v.data() + shift, base.v.shape()}, {o.data() + shift, base.o.shape()},
                                        {lse.data() + shift, base.lse.shape()}};
    ShiftedAllocator off(8 * shift);
    reference::Options options;
    options.workspace = &off;
    reference::forward(p, args, options);
    CHECK(std::equal(base.o.values().begin(), base.o.values().end(), o.begin() + static_cast<std::ptrdiff_t>(shift)));
    CHECK(std::equal(base.lse.values().begin(), base.lse.values().end(),
                     lse.begin() + static_cast<std::ptrdiff_t>(shift)));
  }
}
