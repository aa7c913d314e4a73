// The reference takes its whole workspace from the caller's allocator, exactly as workspace_bytes says.
#include <map>

#include "catch.hpp"
#include "support.hpp"

using namespace flashlab;

namespace {

// Counts live and peak bytes; checks every release matches an allocation.
class CountingAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes, std::string_view what) override {
    void* p = HeapAllocator::instance().allocate(bytes, what);
    live_[p] = bytes;
    current_ += bytes;
    peak_ = std::max(peak_, current_);
    return p;
  }
  void release(void* pointer) noexcept override {
    const auto it = live_.find(pointer);
    if (it == live_.end()) {
      bad_releases_++;
      return;
    }
    current_ -= it->second;
    live_.erase(it);
    HeapAllocator::instance().release(pointer);
  }
  std::size_t peak_ = 0, current_ = 0;
  int bad_releases_ = 0;
  std::map<void*, std::size_t> live_;
};

}  // namespace

TEST_CASE("reference workspace equals workspace_bytes", "[reference][workspace]") {
  std::vector<Problem> problems;
  Problem dense;
  dense.batch = 2;
  dense.heads = 4;
  dense.heads_kv = 2;
  dense.seqlen_q = 97;
  dense.seqlen_k = 129;
  dense.head_dim = 40;
  dense.head_dim_v = 24;
  problems.push_back(dense);
  Problem single = dense;  // one unit: backward slices it and needs partial buffers
  single.batch = 1;
  single.heads = single.heads_kv = 1;
  single.causal = true;
  problems.push_back(single);
  problems.push_back(Problem::varlen(2, 1, 16, {17, 0, 5}, {3, 9, 0}));
  for (const Problem& p : problems) {
    for (const int workers : {1, 3, 8}) {
      for (const std::int64_t row_block : {1, 16, 128}) {
        INFO(p.describe() << ", workers " << workers << ", row block " << row_block);
        CountingAllocator counting;
        const reference::Options options{.row_block = row_block, .workers = workers, .workspace = &counting};
        test::Data data(p);
        data.randomize({.seed = 4});
        data.run_forward(options);
        CHECK(static_cast<std::int64_t>(counting.peak_) ==
              reference::workspace_bytes(p, Pass::fwd, sizeof(double), options));
        counting.peak_ = 0;
        data.run_backward(options);
        CHECK(static_cast<std::int64_t>(counting.peak_) ==
              reference::workspace_bytes(p, Pass::bwd, sizeof(double), options));
        CHECK(counting.current_ == 0);
        CHECK(counting.bad_releases_ == 0);
      }
    }
  }
}
