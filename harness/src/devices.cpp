#include "flashlab/harness/devices.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "flashlab/harness/check.hpp"
#include "flashlab/harness/results.hpp"
#include "flashlab/harness/run_info.hpp"
#include "flashlab/harness/suite.hpp"

namespace flashlab::harness {
namespace {

// The arguments of shard i of n: the run's own options with --shard i/n and the common run id.
std::vector<std::string> shard_arguments(const RunOptions& o, const std::string& run_id, std::size_t i, std::size_t n) {
  std::vector<std::string> args = {"run", o.suite.string(), "--out", o.out.string(), "--run-id", run_id,
                                   "--shard", fmt::format("{}/{}", i, n)};
  if (o.resume) args.emplace_back("--resume");
  if (!o.filter.empty()) args.insert(args.end(), {"--filter", o.filter});
  if (o.seed) args.insert(args.end(), {"--seed", std::to_string(*o.seed)});
  if (!o.save_tensors.empty()) {
    args.insert(args.end(), {"--save-tensors", fmt::format("{}", fmt::join(o.save_tensors, ","))});
  }
  return args;
}

int severity(int code) {  // 3 (output) > 2 (usage) > 1 (rows failed) > 0
  return code == kExitOutput ? 3 : code == kExitUsage ? 2 : code == kExitRowsFailed ? 1 : 0;
}

}  // namespace

std::vector<std::string> parse_devices(const std::string& text) {
  std::vector<std::string> devices;
  for (const std::string& d : split(text, ',')) {
    if (d.empty()) throw std::invalid_argument(fmt::format("'{}': an empty device in the list (e.g. 0,1,2)", text));
    if (std::find(devices.begin(), devices.end(), d) != devices.end()) {
      throw std::invalid_argument(fmt::format("'{}': device {} given twice", text, d));
    }
    devices.push_back(d);
  }
  return devices;
}

std::size_t merge_shards(const std::filesystem::path& run_dir, std::size_t n, const std::vector<std::string>& devices,
                         bool require_all) {
  const std::filesystem::path suite_dir = run_dir.parent_path();
  const std::string run_id = run_dir.filename().string();
  std::vector<ResultRow> rows;
  std::vector<std::string> shard_dirs, missing;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string name = fmt::format("{}-shard-{}-{}", run_id, i, n);
    const std::filesystem::path csv = suite_dir / name / "results.csv";
    if (!std::filesystem::exists(csv)) {  // a shard that failed before writing (its exit code says why)
      missing.push_back(name);
      continue;
    }
    shard_dirs.push_back(name);
    for (ResultRow& r : read_results(csv)) rows.push_back(std::move(r));
  }
  if (shard_dirs.empty() || (require_all && !missing.empty())) {
    throw std::runtime_error(fmt::format("{}: no results.csv in shard folder{} {}", suite_dir.string(),
                                         missing.size() == 1 ? "" : "s", fmt::join(missing, ", ")));
  }
  std::sort(rows.begin(), rows.end(), [](const ResultRow& a, const ResultRow& b) {
    return std::stoll(a.at("row_index")) < std::stoll(b.at("row_index"));
  });
  for (std::size_t i = 1; i < rows.size(); ++i) {
    if (rows[i].at("row_index") == rows[i - 1].at("row_index")) {
      throw std::runtime_error(fmt::format("{}: row {} in two shards (shards of different runs?)", suite_dir.string(),
                                           rows[i].at("row_index")));
    }
  }
  std::filesystem::create_directories(run_dir);
  const std::filesystem::path merged = run_dir / "results.csv", partial = run_dir / "results.csv.merging";
  std::filesystem::remove(partial);
  {
    ResultsWriter writer(partial);
    for (const ResultRow& r : rows) writer.append(r);
  }
  std::filesystem::rename(partial, merged);  // a complete file or none: never a half-merged CSV
  std::ifstream first(suite_dir / shard_dirs.front() / "run.json");
  nlohmann::json j = nlohmann::json::parse(first, nullptr, false);
  if (!j.is_object()) j = nlohmann::json::object();
  j["run_id"] = run_id;
  j["shard"] = "";
  if (!devices.empty()) j["devices"] = devices;
  j["shard_runs"] = shard_dirs;
  if (!missing.empty()) j["shard_runs_missing"] = missing;
  j["rows"] = {{"merged", rows.size()}};
  std::ofstream(run_dir / "run.json") << j.dump(2) << '\n';
  if (std::filesystem::exists(suite_dir / shard_dirs.front() / "suite.toml")) {
    std::filesystem::copy_file(suite_dir / shard_dirs.front() / "suite.toml", run_dir / "suite.toml",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return rows.size();
}

int run_on_devices(const RunOptions& options, const std::vector<std::string>& devices, const std::string& program) {
  if (!options.shard.empty()) {
    std::fprintf(stderr, "flashlab: --devices runs one shard per device: it cannot be combined with --shard\n");
    return kExitUsage;
  }
  const Suite suite = load_suite(options.suite);  // malformed: SuiteError before anything starts
  const std::string run_id = options.run_id.empty() ? utc_time("%Y%m%dT%H%M%SZ") : options.run_id;
  const std::size_t n = devices.size();
  std::vector<pid_t> children;
  for (std::size_t i = 0; i < n; ++i) {
    const std::vector<std::string> args = shard_arguments(options, run_id, i, n);
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("--devices: fork failed");
    if (pid == 0) {
      setenv("CUDA_VISIBLE_DEVICES", devices[i].c_str(), 1);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(program.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(program.c_str(), argv.data());
      std::fprintf(stderr, "flashlab: --devices: cannot start %s\n", program.c_str());
      _exit(kExitOutput);
    }
    children.push_back(pid);
  }
  int worst = 0;
  for (const pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : kExitOutput;
    if (severity(code) > severity(worst)) worst = code;
  }
  std::size_t merged = 0;
  try {
    merged = merge_shards(options.out / suite.settings.name / run_id, n, devices, false);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlab: --devices: %s\n", e.what());
    return worst != 0 ? worst : kExitOutput;
  }
  fmt::print("{}: {} devices ({}), {} rows merged in row order -> {}\n", suite.settings.name, n,
             fmt::join(devices, ","), merged, (options.out / suite.settings.name / run_id / "results.csv").string());
  return worst;
}

}  // namespace flashlab::harness
