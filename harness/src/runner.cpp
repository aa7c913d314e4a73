#include "flashlab/harness/runner.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>

#include "flashlab/core/bytes.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/check.hpp"
#include "flashlab/harness/cost.hpp"
#include "flashlab/harness/io_tensors.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/run_info.hpp"
#include "flashlab/harness/suite.hpp"
#include "flashlab/harness/verify.hpp"

namespace flashlab::harness {
namespace {

std::string number(double x) { return fmt::format("{}", x); }
std::string integer(std::int64_t x) { return std::to_string(x); }

ResultRow identity(const Suite& suite, const std::string& run_id, const RowSpec& row) {
  const Problem& p = row.problem;
  return {{"key", row.key()},
          {"suite", suite.settings.name},
          {"run_id", run_id},
          {"row_index", integer(row.index)},
          {"variant", row.variant},
          {"pass", std::string(name(row.pass))},
          {"dtype", std::string(name(row.dtype))},
          {"distribution", std::string(name(row.distribution))},
          {"seed", std::to_string(suite.settings.seed)},
          {"batch", integer(p.batch)},
          {"heads", integer(p.heads)},
          {"heads_kv", integer(p.heads_kv)},
          {"seqlen_q", integer(p.seqlen_q)},
          {"seqlen_k", integer(p.seqlen_k)},
          {"head_dim", integer(p.head_dim)},
          {"head_dim_v", integer(p.dv())},
          {"causal", p.causal ? "1" : "0"},
          {"window_left", integer(p.window.left)},
          {"window_right", integer(p.window.right)},
          {"softmax_scale", p.head_dim > 0 ? number(p.scale()) : ""},
          {"varlen", p.is_varlen() ? "1" : "0"},
          {"dropout", number(p.dropout.p)},
          {"dropout_seed", std::to_string(p.dropout.seed)},
          {"key_padding", std::string(name(p.key_padding))},
          {"valid_tokens", p.is_padded() ? integer(std::accumulate(p.valid_lengths.begin(), p.valid_lengths.end(),
                                                                   std::int64_t{0}))
                                         : ""}};
}

// Median, p20, p80 (linear interpolation between order statistics), min, relative spread (p80 - p20) / median.
struct TimeStats {
  double median, p20, p80, min, spread;
};
TimeStats stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  auto quantile = [&](double q) {
    const double at = q * static_cast<double>(ms.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(at));
    const std::size_t hi = std::min(lo + 1, ms.size() - 1);
    return ms[lo] + (at - static_cast<double>(lo)) * (ms[hi] - ms[lo]);
  };
  const double median = quantile(0.5);
  return {median, quantile(0.2), quantile(0.8), ms.front(), median > 0 ? (quantile(0.8) - quantile(0.2)) / median : 0};
}

void record_verification(const Verification& v, ResultRow& r) {
  r["verified_heads"] = v.verified_heads;
  r["verified_rows"] = v.verified_rows;
  if (!v.verified()) return;
  r["data_path"] = v.data_path;
  r["bound_lambda"] = number(kBoundLambda);
  for (const auto& [tensor, e] : v.tensors) {
    const std::string prefix = "err_" + tensor + "_";
    r[prefix + "max_abs"] = number(e.error.max_abs);
    r[prefix + "rel_fro"] = number(e.error.rel_fro);
    r[prefix + "rmse"] = number(e.error.rmse);
    r[prefix + "bias"] = number(e.error.bias);
    r[prefix + "max_rel"] = number(e.error.max_rel);
    r[prefix + "worst_index"] = e.worst_index;
    if (e.baseline) {
      r[prefix + "baseline"] = number(e.baseline->max_abs);
      r[prefix + "baseline_rel_fro"] = number(e.baseline->rel_fro);
      r[prefix + "baseline_rmse"] = number(e.baseline->rmse);
      r[prefix + "baseline_bias"] = number(e.baseline->bias);
      r[prefix + "baseline_max_rel"] = number(e.baseline->max_rel);
    }
    if (e.upcast) {
      r[prefix + "upcast"] = number(e.upcast->max_abs);
      r[prefix + "upcast_rmse"] = number(e.upcast->rmse);
    }
    r[prefix + "floor"] = number(e.floor);
    if (e.rule_pass) r[prefix + "rule_pass"] = *e.rule_pass ? "1" : "0";
    r[prefix + "bound"] = number(e.bound);
    r[prefix + "bound_prob"] = number(e.bound_prob);
    if (e.error.max_abs > 0) {  // an exact tensor has no tightness
      r[prefix + "tightness"] = number(e.tightness());
      r[prefix + "tightness_prob"] = number(e.tightness_prob());
    }
    r[prefix + "prob_exceed"] = number(e.prob_exceed);
    r[prefix + "bound_pass"] = e.above_bound == 0 ? "1" : "0";
    r[prefix + "pass"] = e.pass ? "1" : "0";
  }
  r["verify_pass"] = v.pass ? "1" : "0";
}

// Outputs of the GPU `standard` variant for the verified groups, by (tensor, sequence, head).
struct BaselineRun {
  std::map<std::tuple<std::string, std::int64_t, std::int64_t>, std::vector<double>> values;
};

std::optional<BaselineRun> run_gpu_baseline(const RowSpec& row, std::uint64_t seed, const GroupChoice& choice,
                                            Backend& backend) {
  const kernels::Variant* standard = find_variant("standard");
  if (!standard || !standard->supports(row.problem, row.dtype, row.pass).ok) return std::nullopt;
  RowSpec baseline_row = row;
  baseline_row.variant = standard->id;
  try {
    backend.prepare(baseline_row, seed);
    standard->forward(backend.params(), backend.context());
    if (row.pass != Pass::fwd) standard->backward(backend.params(), backend.context());
    backend.synchronize();
    BaselineRun run;
    const std::int64_t group = row.problem.group_size();
    for (std::size_t gi = 0; gi < choice.groups.size(); ++gi) {
      const Group& grp = choice.groups[gi];
      const GroupRows& rows = choice.rows[gi];
      for (std::int64_t h = grp.g * group; h < (grp.g + 1) * group; ++h) {
        for (const char* t : {"o", "lse", "dq"}) {
          if (row.pass != Pass::fwd || std::string(t) != "dq") run.values[{t, grp.b, h}] = backend.fetch(t, grp.b, h, &rows.query);
        }
      }
      if (row.pass != Pass::fwd) {
        for (const char* t : {"dk", "dv"}) run.values[{t, grp.b, grp.g}] = backend.fetch(t, grp.b, grp.g, &rows.key);
      }
    }
    backend.release();
    return run;
  } catch (const OutOfMemory&) {
    backend.release();
    return std::nullopt;
  }
}

struct Backends {
  std::unique_ptr<Backend> cpu;
  std::unique_ptr<Backend> gpu;
  std::string gpu_missing;  // why there is no GPU backend
};

// Runs one row and returns its result columns.
ResultRow run_row(const Suite& suite, const std::string& run_id, const RowSpec& row, Backends& backends,
                  const std::set<std::int64_t>& save_tensors, const std::filesystem::path& run_dir) {
  ResultRow r = identity(suite, run_id, row);
  auto finish = [&](const char* status, const std::string& reason) {
    r["status"] = status;
    r["reason"] = reason;
    return r;
  };
  const VariantChoice choice_of_variant = resolve_variant(row.variant);
  const kernels::Variant* variant = choice_of_variant.variant;
  if (!variant) return finish("unsupported", choice_of_variant.error);
  r["materializes"] = variant->materializes ? "1" : "0";
  r["device"] = std::string(kernels::name(variant->device));
  try {
    row.problem.validate();
  } catch (const InvalidProblem& e) {
    return finish("error", e.what());
  }
  kernels::Support support;
  const std::optional<RowSpec> run = row_as_run(row, *variant, support);
  if (!run) return finish("unsupported", support.reason);
  r["unpadded"] = run->token_source.empty() ? "0" : "1";
  const Problem& p = run->problem;
  r["flops"] = number(attention_flops(p, row.pass));
  r["workspace_model_bytes"] = integer(variant->workspace_model(p, row.dtype, row.pass));
  r["bytes_model_min"] = number(minimum_bytes(p, row.dtype, row.pass));
  if (variant->bytes_model) {
    r["bytes_model_variant"] = number(variant->bytes_model(p, row.dtype, row.pass, choice_of_variant.options));
  } else if (variant->materializes) {
    r["bytes_model_variant"] = number(standard_bytes(p, row.dtype, row.pass));
  }
  if (variant->describe_launch) r["launch"] = variant->describe_launch(p, row.dtype, row.pass, choice_of_variant.options);

  Backend* backend = variant->device == kernels::Device::cpu ? backends.cpu.get() : backends.gpu.get();
  if (!backend) return finish("unsupported", backends.gpu_missing);
  const SuiteSettings& settings = suite.settings;
  try {
    // GPU rows: the baseline is the GPU `standard` variant on the same inputs, run first (its outputs kept on the
    // host for the verified groups); where it cannot run (unsupported, out of memory) cpu-standard stands in.
    const GroupChoice choice = choose_groups(p, row.pass, settings, static_cast<std::uint64_t>(row.index));
    std::optional<BaselineRun> baseline;
    if (variant->device == kernels::Device::cuda && !choice.groups.empty() && !variant->materializes) {
      baseline = run_gpu_baseline(*run, settings.seed, choice, *backend);
    }
    backend->workspace().reset_peak();
    backend->prepare(*run, settings.seed);
    r["io_bytes"] = integer(backend->io_bytes());
    const kernels::AttentionParams& params = backend->params();
    auto forward = [&] { variant->forward(params, backend->context()); };
    auto backward = [&] { variant->backward(params, backend->context()); };
    std::function<void()> region = forward;
    if (row.pass == Pass::bwd) region = backward;
    if (row.pass == Pass::fwdbwd) region = [&] { forward(); backward(); };

    // verification run: forward (and backward), checked before anything is timed
    forward();
    if (row.pass != Pass::fwd) backward();
    backend->synchronize();
    if (const auto delta = backend->memgetinfo_delta()) r["memgetinfo_delta_bytes"] = integer(*delta);
    // the baseline's values were read at the chosen rows (the same `choice` draws them)
    const FetchOutput baseline_fetch = [&](const std::string& t, std::int64_t b, std::int64_t h,
                                           const std::vector<std::int64_t>&) { return baseline->values.at({t, b, h}); };
    CheckSubject subject;
    subject.path = variant->data_path(p, row.dtype, params);
    subject.materializing = variant->materializes;
    if (!subject.materializing) {
      const kernels::Variant* base = find_variant(baseline ? "standard" : "cpu-standard");
      subject.baseline_path = base->data_path(p, row.dtype, params);
      subject.baseline = baseline ? &baseline_fetch : nullptr;
    }
    const auto verify_start = std::chrono::steady_clock::now();
    const InputSpec inputs{settings.seed, row.distribution, row.dtype, run->token_source};
    const Expectation expected(p, row.dtype, row.pass, inputs, choice, subject);
    double verify_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - verify_start).count();
    const FetchOutput fetch = [&](const std::string& t, std::int64_t b, std::int64_t h,
                                  const std::vector<std::int64_t>& rows) { return backend->fetch(t, b, h, &rows); };
    auto timed_check = [&] {
      const auto start = std::chrono::steady_clock::now();
      Verification v = expected.check(fetch);
      verify_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return v;
    };
    const Verification before = timed_check();

    const std::vector<double> ms = backend->time(region, settings.warmup, settings.repetitions);
    backend->synchronize();
    const Verification verification = worse(before, timed_check());  // the last timed output
    record_verification(verification, r);
    r["verify_seconds"] = number(verify_seconds);
    for (const char* tensor : kOutputTensors) r[std::string("hash_") + tensor] = backend->output_hash(tensor);
    r["workspace_peak_bytes"] = integer(backend->workspace().peak_bytes());
    r["workspace_reserved_bytes"] = integer(backend->workspace().reserved_peak_bytes());
    r["device_peak_bytes"] = integer(backend->io_bytes() + backend->workspace().peak_bytes());

    const TimeStats t = stats(ms);
    r["warmup"] = integer(settings.warmup);
    r["time_samples"] = integer(static_cast<std::int64_t>(ms.size()));
    r["time_median_ms"] = number(t.median);
    r["time_p20_ms"] = number(t.p20);
    r["time_p80_ms"] = number(t.p80);
    r["time_min_ms"] = number(t.min);
    r["time_spread"] = number(t.spread);

    if (settings.profile && variant->device == kernels::Device::cuda) {
      std::string why;
      if (const auto traffic = backend->traffic(region, why)) {
        r["dram_read_bytes"] = number(traffic->dram_read_bytes);
        r["dram_write_bytes"] = number(traffic->dram_write_bytes);
        r["l2_read_bytes"] = number(traffic->l2_read_bytes);
        r["l2_write_bytes"] = number(traffic->l2_write_bytes);
      } else {
        r["reason"] = "traffic not measured: " + why;
      }
    }
    if (save_tensors.count(row.index)) {
      const std::string dir = (run_dir / "tensors" / fmt::format("row-{}", row.index)).string();
      backend->save_tensors(dir, row.pass);
      write_reference_npy(dir, p, row.pass, inputs);
    }
    backend->release();
    if (verification.verified() && !verification.pass) return finish("error", "verification failed: " + verification.failure);
    if (!verification.verified() && settings.verify != "none") {
      return finish("error", "not verified: " + verification.verified_heads);
    }
    r["tflops"] = number(attention_flops(p, row.pass) / (t.median * 1e-3) / 1e12);
    r["status"] = "ok";
    return r;
  } catch (const OutOfMemory& e) {
    backend->release();
    return finish("oom", e.what());
  } catch (const Unsupported& e) {
    backend->release();
    return finish("unsupported", e.what());
  } catch (const std::exception& e) {
    backend->release();
    return finish("error", e.what());
  }
}

// A row whose estimated cost exceeds the suite's max_row_seconds: recorded as `skipped` with the estimate.
std::optional<ResultRow> over_budget(const Suite& suite, const std::string& run_id, const RowSpec& row,
                                     const std::optional<CostModel>& model) {
  if (!model) return std::nullopt;
  const kernels::Variant* variant = resolve_variant(row.variant).variant;
  if (!variant) return std::nullopt;  // run_row records why
  const RowCost cost = estimate_cost(row, suite.settings, *variant, *model);
  if (cost.total() <= suite.settings.max_row_seconds) return std::nullopt;
  ResultRow r = identity(suite, run_id, row);
  r["status"] = "skipped";
  r["reason"] = fmt::format("estimated cost {} exceeds the suite's max_row_seconds = {} ({:.1f} GFLOP/s on the CPU "
                            "workers, {:.0f} TFLOP/s assumed on a GPU)",
                            cost.describe(), suite.settings.max_row_seconds, model->cpu_flops_per_second / 1e9,
                            model->gpu_flops_per_second / 1e12);
  return r;
}

// The most recent run directory of a suite (run ids sort by time), or empty.
std::string latest_run(const std::filesystem::path& suite_dir) {
  std::string latest;
  if (!std::filesystem::is_directory(suite_dir)) return latest;
  for (const auto& entry : std::filesystem::directory_iterator(suite_dir)) {
    if (entry.is_directory() && std::filesystem::exists(entry.path() / "results.csv")) {
      latest = std::max(latest, entry.path().filename().string());
    }
  }
  return latest;
}

constexpr double kProgressSeconds = 30;

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds);
  return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

}  // namespace

std::optional<RowSpec> row_as_run(const RowSpec& row, const kernels::Variant& variant, kernels::Support& support) {
  support = variant.supports(row.problem, row.dtype, row.pass);
  if (support.ok) return row;
  if (!row.problem.is_padded()) return std::nullopt;
  RowSpec unpadded = row;
  unpadded.problem = row.problem.unpadded();
  const kernels::Support varlen = variant.supports(unpadded.problem, row.dtype, row.pass);
  if (!varlen.ok) {
    support.reason = "its unpadded varlen form: " + varlen.reason;
    return std::nullopt;
  }
  unpadded.token_source = row.problem.padded_tokens();
  return unpadded;
}

std::set<std::int64_t> parse_row_list(const std::string& text) {
  std::set<std::int64_t> rows;
  auto index = [&](const std::string& part) {
    if (part.empty() || part.size() > 12 || part.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument(fmt::format("'{}' in '{}' is not a row index (rows: 3, 0,5,7, 10-12)", part, text));
    }
    return std::stoll(part);
  };
  for (const std::string& part : split(text, ',')) {
    const std::size_t dash = part.find('-');
    if (dash == std::string::npos) {
      rows.insert(index(part));
    } else {
      const std::int64_t first = index(part.substr(0, dash)), last = index(part.substr(dash + 1));
      if (first > last) throw std::invalid_argument(fmt::format("range '{}' in '{}' runs backwards", part, text));
      if (last - first >= 100000) throw std::invalid_argument(fmt::format("range '{}' in '{}' is over 100000 rows", part, text));
      for (std::int64_t r = first; r <= last; ++r) rows.insert(r);
    }
  }
  return rows;
}

int run_suite(const RunOptions& options) {
  kernels::Fault fault = kernels::Fault::none;
  try {
    fault = injected_fault();
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "flashlab: %s\n", e.what());
    return kExitUsage;
  }
  if (fault != kernels::Fault::none) {
    std::fprintf(stderr, "flashlab: warning: FLASHLAB_FAULT=%s injects a fault (test-only)\n",
                 std::string(name(fault)).c_str());
  }
  Suite suite = load_suite(options.suite);
  if (options.seed) suite.settings.seed = *options.seed;
  {
    std::vector<std::string> names;
    for (const RowSpec& row : suite.rows) names.push_back(row.variant);
    const std::vector<std::string> unknown = unknown_variant_ids(names);
    if (!unknown.empty()) {
      std::string list;
      for (const std::string& id : unknown) list += (list.empty() ? "'" : ", '") + id + "'";
      std::fprintf(stderr, "flashlab: %s: unknown variant %s (the variants: %s)\n", options.suite.string().c_str(),
                   list.c_str(), variant_id_list().c_str());
      return kExitUsage;
    }
  }
  if (!options.save_tensors.empty() && *options.save_tensors.rbegin() >= static_cast<std::int64_t>(suite.rows.size())) {
    std::fprintf(stderr, "flashlab: --save-tensors: row %lld is not a row of suite %s (rows 0 ... %zu)\n",
                 static_cast<long long>(*options.save_tensors.rbegin()), suite.settings.name.c_str(),
                 suite.rows.size() - 1);
    return kExitUsage;
  }
  std::vector<RowSpec> rows = suite.rows;
  if (!options.filter.empty()) {
    rows = filter_rows(rows, options.filter);
    if (rows.empty()) {
      std::fprintf(stderr, "flashlab: --filter '%s' matches none of the %zu rows of suite %s\n", options.filter.c_str(),
                   suite.rows.size(), suite.settings.name.c_str());
      return kExitUsage;
    }
  }
  if (!options.shard.empty()) rows = shard_rows(rows, options.shard);

  if (options.dry_run) {
    const CostModel model = CostModel::measure();
    fmt::print("{} rows of suite {} ({} before --filter/--shard); estimated costs at {:.1f} GFLOP/s on the CPU "
               "workers (measured), {:.0f} TFLOP/s on a GPU (assumed)\n",
               rows.size(), suite.settings.name, suite.rows.size(), model.cpu_flops_per_second / 1e9,
               model.gpu_flops_per_second / 1e12);
    RowCost all;
    for (const RowSpec& row : rows) {
      const VariantChoice choice = resolve_variant(row.variant);
      const kernels::Variant* v = choice.variant;
      std::string status = v ? "run" : "unsupported: " + choice.error;
      if (v) {
        try {
          row.problem.validate();
          kernels::Support s;
          if (!row_as_run(row, *v, s)) status = "unsupported: " + s.reason;
        } catch (const InvalidProblem& e) {
          status = std::string("error: ") + e.what();
        }
      }
      std::string estimate;
      if (status == "run") {
        const RowCost cost = estimate_cost(row, suite.settings, *v, model);
        all.run_seconds += cost.run_seconds;
        all.verify_seconds += cost.verify_seconds;
        estimate = "  " + cost.describe();
        if (suite.settings.max_row_seconds > 0 && cost.total() > suite.settings.max_row_seconds) {
          status = fmt::format("skipped: over max_row_seconds = {}", suite.settings.max_row_seconds);
        }
      }
      fmt::print("{:>5}  {}  [{}]{}\n", row.index, row.key(), status, estimate);
    }
    fmt::print("estimated total {}\n", all.describe());
    return kExitOk;
  }

  const std::filesystem::path suite_dir = options.out / suite.settings.name;
  // The run id names one folder under the suite's: one plain path component, as the suite name.
  if (!options.run_id.empty()) {
    const bool plain = std::all_of(options.run_id.begin(), options.run_id.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    });
    if (!plain || options.run_id == "." || options.run_id == "..") {
      std::fprintf(stderr, "flashlab: --run-id '%s': a run id is one name of letters, digits, '_', '-' and '.'\n",
                   options.run_id.c_str());
      return kExitUsage;
    }
  }
  std::string shard_suffix;  // each shard writes its own folder, given run id or not
  if (!options.shard.empty()) {
    std::string shard = options.shard;
    std::replace(shard.begin(), shard.end(), '/', '-');
    shard_suffix = "-shard-" + shard;
  }
  std::string run_id = options.run_id.empty() ? std::string() : options.run_id + shard_suffix;
  if (run_id.empty() && options.resume) run_id = latest_run(suite_dir);
  if (run_id.empty()) run_id = utc_time("%Y%m%dT%H%M%SZ") + shard_suffix;
  const std::filesystem::path run_dir = suite_dir / run_id;
  const std::filesystem::path csv = run_dir / "results.csv";
  if (!options.resume && std::filesystem::exists(csv)) {
    std::fprintf(stderr, "flashlab: %s exists; use --resume to continue it or another --run-id\n", csv.c_str());
    return kExitOutput;
  }
  if (options.resume) {  // one run, one suite: an edited suite would mix two row sets under one row_index
    const std::string recorded = recorded_suite_hash(run_dir / "run.json");
    if (!recorded.empty() && recorded != suite.text_hash) {
      std::fprintf(stderr,
                   "flashlab: %s was run from another version of %s (suite_hash %s, now %s): resume with the suite "
                   "as it was, or start a new --run-id\n",
                   run_dir.c_str(), options.suite.c_str(), recorded.c_str(), suite.text_hash.c_str());
      return kExitUsage;
    }
  }
  if (options.resume && std::filesystem::exists(csv)) {  // one run, one seed: the `seed` column is the run's
    const std::string seed = std::to_string(suite.settings.seed);
    for (const ResultRow& r : read_results(csv)) {
      if (const auto it = r.find("seed"); it != r.end() && it->second != seed) {
        std::fprintf(stderr, "flashlab: %s holds rows of seed %s, this run's seed is %s: resume with --seed %s\n",
                     csv.c_str(), it->second.c_str(), seed.c_str(), it->second.c_str());
        return kExitUsage;
      }
    }
  }
  std::filesystem::create_directories(run_dir);
  // the suite as it ran, beside its results (resume refuses a suite whose bytes changed, so the copy stays true)
  std::filesystem::copy_file(options.suite, run_dir / "suite.toml", std::filesystem::copy_options::overwrite_existing);
  std::set<std::string> done = completed_keys(csv);
  ResultsWriter writer(csv);

  Backends backends;
  backends.cpu = make_cpu_backend();
  try {
    backends.gpu = make_gpu_backend();
  } catch (const std::exception& e) {
    backends.gpu_missing = e.what();
  }
  RunInfo info = start_run_info(run_dir / "run.json", suite, run_id, options, backends.gpu != nullptr);

  const std::optional<CostModel> cost_model =
      suite.settings.max_row_seconds > 0 ? std::optional<CostModel>(CostModel::measure()) : std::nullopt;
  std::size_t index = 0, skipped = 0;
  const auto started = std::chrono::steady_clock::now();
  std::size_t ran = 0;
  double last_progress = 0;
  std::map<std::string, std::size_t> by_status;                         // the rows this process ran
  std::map<std::pair<std::string, std::string>, std::size_t> reasons;  // (status, reason) of the rows not ok
  for (const RowSpec& row : rows) {
    ++index;
    if (done.count(row.key())) {
      ++skipped;
      continue;
    }
    const std::optional<ResultRow> skip = over_budget(suite, run_id, row, cost_model);
    const ResultRow result = skip ? *skip : run_row(suite, run_id, row, backends, options.save_tensors, run_dir);
    writer.append(result);
    ++ran;
    const std::string& status = result.at("status");
    ++by_status[status];
    if (status != "ok") ++reasons[{status, result.at("reason")}];
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const bool last = index == rows.size();
    // a log (CI, `| tee`) gets a line at most every kProgressSeconds, and the first and the last row
    const bool due = options.progress_terminal || ran == 1 || last || elapsed - last_progress >= kProgressSeconds;
    if (options.progress && due) {
      last_progress = elapsed;
      const double eta = elapsed / static_cast<double>(ran) * static_cast<double>(rows.size() - index);
      const auto ms = result.find("time_median_ms");
      const std::string line = fmt::format(
          "[{}/{}] {} {} {} N={} d={}: {}{}  ETA {}", index, rows.size(), row.variant, name(row.pass), name(row.dtype),
          row.problem.seqlen_q, row.problem.head_dim, status, ms != result.end() ? " " + ms->second + " ms" : "",
          format_duration(eta));
      if (options.progress_terminal) {
        std::fprintf(stderr, "\r\033[K%s", line.c_str());
      } else {
        std::fprintf(stderr, "flashlab: %s %s\n", suite.settings.name.c_str(), line.c_str());
      }
      std::fflush(stderr);
    }
  }
  if (options.progress && options.progress_terminal) std::fprintf(stderr, "\n");
  finish_run_info(info, rows.size(), ran, skipped);
  std::string counts;
  for (const char* status : {"ok", "oom", "unsupported", "skipped", "error"}) {
    if (by_status.count(status)) counts += fmt::format(", {} {}", by_status.at(status), status);
  }
  fmt::print("{}: {} rows written{}; {} already present -> {}\n", suite.settings.name, ran, counts, skipped,
             csv.string());
  for (const auto& [what, count] : reasons) {  // each distinct reason once
    fmt::print("  {} x{}: {}\n", what.first, count, what.second.empty() ? "(no reason given)" : what.second);
  }
  return by_status.count("error") ? kExitRowsFailed : kExitOk;
}

}  // namespace flashlab::harness
