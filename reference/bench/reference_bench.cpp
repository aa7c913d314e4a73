// Benchmark of the Eigen reference: forward + backward of one problem in double (or float), its GFLOP/s under
// the flops model, and the machine's GEMM rate measured with Eigen alone on the same number of workers,
// so the two can be compared. Host code on synchronous work: a steady clock around each call is exact.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <vector>

#include "flashlab/core/flops.hpp"
#include "flashlab/core/parallel.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Aggregate GEMM rate of `workers` threads, each multiplying its own n x n matrices `repeats` times.
template <class Scalar>
double gemm_gflops(int workers, int n, int repeats) {
  using M = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  std::vector<M> a(workers, M::Random(n, n)), b(workers, M::Random(n, n)), c(workers, M::Zero(n, n));
  for (int w = 0; w < workers; ++w) c[w].noalias() = a[w] * b[w];  // warm-up
  const auto start = Clock::now();
  flashlab::parallel_for(workers, workers, [&](std::int64_t w, int) {
    for (int r = 0; r < repeats; ++r) c[w].noalias() += a[w] * b[w];
  });
  const double elapsed = seconds_since(start);
  return 2.0 * n * n * double(n) * repeats * workers / elapsed / 1e9;
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

template <class Scalar>
int run(const flashlab::Problem& problem, const flashlab::reference::Options& options, int repeats, bool gemm) {
  using namespace flashlab;
  const int workers = options.workers > 0 ? options.workers : default_worker_count();
  reference::AttentionData<Scalar> data(problem);
  data.randomize({.seed = 0, .distribution = Distribution::normal, .dtype = DType::fp64});

  std::vector<double> fwd, bwd;
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    data.run_forward(options);
    fwd.push_back(seconds_since(start));
    start = Clock::now();
    data.run_backward(options);
    bwd.push_back(seconds_since(start));
  }
  const double t_fwd = median(fwd), t_bwd = median(bwd);
  const double gf_fwd = attention_flops(problem, Pass::fwd) / t_fwd / 1e9;
  const double gf_bwd = attention_flops(problem, Pass::bwd) / t_bwd / 1e9;
  const double gf_all = attention_flops(problem, Pass::fwdbwd) / (t_fwd + t_bwd) / 1e9;
  const double rss = peak_rss_mib();
  const double workspace = static_cast<double>(
      reference::workspace_bytes(problem, Pass::fwdbwd, sizeof(Scalar), options)) / (1 << 20);

  fmt::print("problem        {} ({})\n", problem.describe(), sizeof(Scalar) == 8 ? "double" : "float");
  fmt::print("workers        {} (row block {})\n", workers, options.row_block);
  fmt::print("forward        {:.3f} s  {:.2f} GFLOP/s   (median of {})\n", t_fwd, gf_fwd, repeats);
  fmt::print("backward       {:.3f} s  {:.2f} GFLOP/s\n", t_bwd, gf_bwd);
  fmt::print("fwd+bwd        {:.3f} s  {:.2f} GFLOP/s   [{}]\n", t_fwd + t_bwd, gf_all, kFlopsConvention);
  fmt::print("workspace      {:.1f} MiB (model)\n", workspace);
  fmt::print("peak RSS       {:.1f} MiB (whole process, inputs and outputs included)\n", rss);
  if (gemm) {
    const double gemm_all = gemm_gflops<Scalar>(workers, 1024, 4);
    const double gemm_one = gemm_gflops<Scalar>(1, 1024, 4);
    fmt::print("Eigen GEMM     {:.2f} GFLOP/s on {} workers, {:.2f} GFLOP/s on 1 (1024^3, same build)\n", gemm_all,
               workers, gemm_one);
    fmt::print("ratio          reference fwd+bwd / GEMM = {:.2f}\n", gf_all / gemm_all);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Benchmark of flashlab's Eigen reference attention (forward + backward)."};
  flashlab::Problem problem;
  problem.seqlen_q = problem.seqlen_k = 4096;
  problem.head_dim = 128;
  flashlab::reference::Options options;
  std::string scalar = "double";
  int repeats = 3;
  bool no_gemm = false;
  std::int64_t seqlen = 0;
  app.add_option("--seqlen", seqlen, "N_q = N_k (default 4096)")->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  app.add_option("--seqlen-q", problem.seqlen_q, "N_q");
  app.add_option("--seqlen-k", problem.seqlen_k, "N_k");
  app.add_option("--head-dim", problem.head_dim, "d")->capture_default_str();
  app.add_option("--batch", problem.batch, "B")->capture_default_str();
  app.add_option("--heads", problem.heads, "H")->capture_default_str();
  app.add_option("--heads-kv", problem.heads_kv, "H_kv (default H)");
  app.add_flag("--causal", problem.causal, "causal mask (bottom-right aligned)");
  app.add_option("--row-block", options.row_block, "query rows per block")->capture_default_str();
  app.add_option("--threads", options.workers, "workers (default: FLASHLAB_THREADS or all cores)");
  app.add_option("--scalar", scalar, "double or float")->check(CLI::IsMember({"double", "float"}))->capture_default_str();
  app.add_option("--repeat", repeats, "timed repetitions (median reported)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_flag("--no-gemm", no_gemm, "skip the Eigen GEMM rate measurement");
  CLI11_PARSE(app, argc, argv);
  if (const std::string problem_text = flashlab::worker_count_problem(); !problem_text.empty()) {
    std::fprintf(stderr, "flashlab_reference_bench: %s\n", problem_text.c_str());
    return 2;
  }
  if (app.count("--seqlen") > 0) problem.seqlen_q = problem.seqlen_k = seqlen;
  if (app.count("--heads-kv") == 0) problem.heads_kv = problem.heads;
  try {
    return scalar == "double" ? run<double>(problem, options, repeats, !no_gemm)
                              : run<float>(problem, options, repeats, !no_gemm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlab_reference_bench: %s\n", e.what());
    return 2;
  }
}
