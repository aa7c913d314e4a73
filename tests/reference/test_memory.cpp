// The reference never materializes N x N: forward + backward of one head at N = 16384 (an N x N double
// matrix alone is 2 GiB) must stay within its inputs, outputs and modelled workspace plus a fixed slack for
// the runtime, Eigen's packing buffers and the allocator. Runs in its own process so the peak RSS is its own.
#include <sys/resource.h>

#include <cstdio>
#include <exception>

#include "flashlab/reference/attention_data.hpp"

int main() {
  using namespace flashlab;
  constexpr std::int64_t kN = 16384;
  constexpr double kMiB = 1024.0 * 1024.0;
  constexpr double kSlackMiB = 64.0;
  try {
    Problem p;
    p.seqlen_q = p.seqlen_k = kN;
    p.head_dim = 16;
    const reference::Options options{.row_block = 128, .workers = 2};
    reference::AttentionData<double> data(p);
    data.randomize({.seed = 1});
    data.run_forward(options);
    data.run_backward(options);
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const double peak = static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB -> MiB
    const double tensors = 9.0 * kN * p.head_dim * sizeof(double) / kMiB + kN * sizeof(double) / kMiB;
    const double workspace =
        static_cast<double>(reference::workspace_bytes(p, Pass::fwdbwd, sizeof(double), options)) / kMiB;
    const double bound = tensors + workspace + kSlackMiB;
    const double n_by_n = static_cast<double>(kN) * kN * sizeof(double) / kMiB;
    std::printf("peak RSS %.1f MiB; tensors %.1f + workspace model %.1f + slack %.0f = bound %.1f MiB; "
                "one N x N matrix would be %.0f MiB\n",
                peak, tensors, workspace, kSlackMiB, bound, n_by_n);
    if (peak > bound) {
      std::printf("FAILED: peak RSS above the bound\n");
      return 1;
    }
    std::printf("passed\n");
    return 0;
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
}
