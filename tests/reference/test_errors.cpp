// The reference rejects bad arguments with errors that name the problem.
#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;

TEST_CASE("the reference validates the problem first", "[reference][errors]") {
  Problem p;
  p.seqlen_q = p.seqlen_k = 4;
  p.head_dim = 8;
  test::Data data(p);
  Problem bad = p;
  bad.heads_kv = 3;
  REQUIRE_THROWS_AS(reference::forward(bad, data.forward_args()), InvalidProblem);
  REQUIRE_THROWS_AS(reference::backward(bad, data.backward_args()), InvalidProblem);
}

TEST_CASE("tensors of the wrong shape are named", "[reference][errors]") {
  Problem p;
  p.seqlen_q = p.seqlen_k = 4;
  p.head_dim = 8;
  test::Data data(p);
  Problem longer = p;
  longer.seqlen_k = 5;
  try {
    reference::forward(longer, data.forward_args());
    FAIL("expected InvalidProblem");
  } catch (const InvalidProblem& e) {
    CHECK(e.field() == "k");
    CHECK(std::string(e.what()).find("[1, 4, 1, 8]") != std::string::npos);
    CHECK(std::string(e.what()).find("[1, 5, 1, 8]") != std::string::npos);
  }
}

TEST_CASE("a last dimension that is not contiguous is rejected", "[reference][errors]") {
  Problem p;
  p.seqlen_q = p.seqlen_k = 4;
  p.head_dim = 8;
  test::Data data(p);
  auto args = data.forward_args();
  std::vector<double> storage(2 * 4 * 8);
  args.v = TensorView<const double, 4>(storage.data(), {1, 4, 1, 8}, {64, 16, 8, 2});
  try {
    reference::forward(p, args);
    FAIL("expected InvalidProblem");
  } catch (const InvalidProblem& e) {
    CHECK(e.field() == "v");
    CHECK(std::string(e.what()).find("stride 2") != std::string::npos);
  }
}

TEST_CASE("a row block below 1 is rejected", "[reference][errors]") {
  Problem p;
  test::Data data(p);
  REQUIRE_THROWS_AS(reference::forward(p, data.forward_args(), {.row_block = 0}), std::invalid_argument);
}
