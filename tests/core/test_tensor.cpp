// Tensor views and owning tensors: strides, offsets, contiguity, zero initialisation, the shapes a
// Problem implies and check_shape's error.
#include <cstdint>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/problem.hpp"
#include "flashlab/core/tensor.hpp"

namespace flashlab {

TEST_CASE("contiguous strides are row-major", "[tensor]") {
  CHECK(contiguous_strides<4>({2, 3, 4, 5}) == Shape<4>{60, 20, 5, 1});
  CHECK(contiguous_strides<1>({7}) == Shape<1>{1});
  CHECK(contiguous_strides<3>({129, 1, 17}) == Shape<3>{17, 17, 1});
  static_assert(contiguous_strides<2>({3, 8}) == Shape<2>{8, 1});
}

TEST_CASE("element_count multiplies the extents", "[tensor]") {
  CHECK(element_count<4>({2, 3, 4, 5}) == 120);
  CHECK(element_count<3>({3, 0, 2}) == 0);
  CHECK(element_count<1>({1025}) == 1025);
  CHECK(element_count<4>({1 << 10, 1 << 10, 1 << 10, 1 << 10}) == std::int64_t{1} << 40);  // no int overflow
}

TEST_CASE("views index through their strides", "[tensor]") {
  std::vector<int> data(120);
  for (std::size_t k = 0; k < data.size(); ++k) data[k] = static_cast<int>(k);

  const TensorView<int, 4> row_major(data.data(), {2, 3, 4, 5});
  CHECK(row_major.is_contiguous());
  CHECK(row_major.numel() == 120);
  CHECK(row_major.size(2) == 4);
  CHECK(row_major.stride(1) == 20);
  CHECK(row_major.offset(1, 2, 3, 4) == 60 + 40 + 15 + 4);
  CHECK(row_major(1, 2, 3, 4) == 119);
  CHECK(row_major(0, 1, 0, 2) == 22);

  // The same memory seen column-major: element (a, b, c, d) at a + 2 b + 6 c + 24 d.
  const TensorView<int, 4> column_major(data.data(), {2, 3, 4, 5}, {1, 2, 6, 24});
  CHECK(!column_major.is_contiguous());
  CHECK(column_major.offset(1, 2, 3, 4) == 1 + 4 + 18 + 96);
  CHECK(column_major(1, 0, 2, 1) == 1 + 12 + 24);

  // Padded rows (a row stride larger than the row) are not contiguous either.
  const TensorView<int, 2> padded(data.data(), {3, 5}, {8, 1});
  CHECK(!padded.is_contiguous());
  CHECK(padded(2, 4) == 20);

  // Writing through a view lands at the offset; a const view sees it.
  row_major(0, 0, 1, 1) = -7;
  CHECK(data[6] == -7);
  const TensorView<const int, 4> read_only = row_major;
  CHECK(read_only(0, 0, 1, 1) == -7);
  CHECK(read_only.strides() == row_major.strides());
}

TEST_CASE("tensors are zero-initialised, contiguous and row-major", "[tensor]") {
  Tensor<double, 3> t({3, 5, 7});
  CHECK(t.numel() == 105);
  CHECK(t.values().size() == 105);
  for (const double v : t.values()) CHECK(v == 0.0);
  CHECK(t.view().is_contiguous());
  t(1, 2, 3) = 4.5;
  CHECK(t.values()[1 * 35 + 2 * 7 + 3] == 4.5);
  const Tensor<double, 3>& ct = t;
  CHECK(ct(1, 2, 3) == 4.5);
  CHECK(ct.view()(1, 2, 3) == 4.5);

  Tensor<float, 4> f({2, 0, 3, 4});
  CHECK(f.numel() == 0);
  CHECK(f.values().empty());
}

TEST_CASE("attention_shapes of dense and varlen problems", "[tensor]") {
  SECTION("dense: Q [B, N_q, H, d], K [B, N_k, H_kv, d], V [B, N_k, H_kv, d_v], O [B, N_q, H, d_v], LSE [B, H, N_q]") {
    Problem p;
    p.batch = 2;
    p.heads = 8;
    p.heads_kv = 2;
    p.seqlen_q = 17;
    p.seqlen_k = 129;
    p.head_dim = 64;
    p.head_dim_v = 80;
    const AttentionShapes s = attention_shapes(p);
    CHECK(s.q == Shape<4>{2, 17, 8, 64});
    CHECK(s.k == Shape<4>{2, 129, 2, 64});
    CHECK(s.v == Shape<4>{2, 129, 2, 80});
    CHECK(s.o == Shape<4>{2, 17, 8, 80});
    CHECK(s.lse == Shape<3>{2, 8, 17});
  }
  SECTION("varlen: [1, total, H, d] and LSE [1, H, total_q]") {
    const Problem p = Problem::varlen(4, 2, 32, {3, 0, 5}, {4, 2, 0});  // total_q = 8, total_k = 6
    const AttentionShapes s = attention_shapes(p);
    CHECK(s.q == Shape<4>{1, 8, 4, 32});
    CHECK(s.k == Shape<4>{1, 6, 2, 32});
    CHECK(s.v == Shape<4>{1, 6, 2, 32});
    CHECK(s.o == Shape<4>{1, 8, 4, 32});
    CHECK(s.lse == Shape<3>{1, 4, 8});
  }
}

TEST_CASE("check_shape names the tensor and both shapes", "[tensor]") {
  std::vector<double> data(2 * 17 * 8 * 64);
  const TensorView<double, 4> q(data.data(), {2, 17, 8, 64});
  CHECK_NOTHROW(check_shape("q", q, {2, 17, 8, 64}));
  CHECK_THROWS_AS(check_shape("q", q, {2, 17, 8, 65}), InvalidProblem);
  bool threw = false;
  try {
    check_shape("q", q, {2, 16, 8, 64});
  } catch (const InvalidProblem& error) {
    threw = true;
    const std::string message = error.what();
    INFO(message);
    CHECK(error.field() == "q");
    CHECK(message.find("q") != std::string::npos);
    CHECK(message.find("[2, 17, 8, 64]") != std::string::npos);
    CHECK(message.find("[2, 16, 8, 64]") != std::string::npos);
  }
  CHECK(threw);

  std::vector<float> lse_data(2 * 8 * 17);
  const TensorView<const float, 3> lse(lse_data.data(), {2, 8, 17});
  CHECK_NOTHROW(check_shape("lse", lse, {2, 8, 17}));
  CHECK_THROWS_AS(check_shape("lse", lse, {2, 17, 8}), InvalidProblem);
}

TEST_CASE("to_string formats extents", "[tensor]") {
  const Shape<3> shape{1, 25, 3};
  CHECK(to_string(shape.data(), 3) == "[1, 25, 3]");
  CHECK(to_string(shape.data(), 1) == "[1]");
  CHECK(to_string(shape.data(), 0) == "[]");
}

}  // namespace flashlab
