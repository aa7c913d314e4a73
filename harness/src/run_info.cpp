#include "flashlab/harness/run_info.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

#include "flashlab/core/flops.hpp"
#include "flashlab/core/parallel.hpp"
#include "flashlab/harness/registry.hpp"

#ifndef FLASHLAB_SOURCE_DIR
#define FLASHLAB_SOURCE_DIR "."
#endif

namespace flashlab::harness {
namespace {

std::string utc_now() { return utc_time("%Y-%m-%dT%H:%M:%SZ"); }

std::string command_output(const std::string& command) {
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    std::array<char, 256> buffer{};
    while (fgets(buffer.data(), buffer.size(), pipe)) out += buffer.data();
    pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string model = line.substr(line.find(':') + 1);
      while (!model.empty() && model.front() == ' ') model.erase(model.begin());
      return model;
    }
  }
  return "unknown";
}

// The machine the run's host code ran on: CPU, cores, memory, operating system; `threads` the CPU workers.
nlohmann::json host_block() {
  utsname u{};
  const bool named = uname(&u) == 0;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  return {{"threads", default_worker_count()},
          {"cuda_visible_devices", visible ? nlohmann::json(visible) : nlohmann::json(nullptr)},
          {"cpu_model", cpu_model()},
          {"cores", std::thread::hardware_concurrency()},
          {"memory_bytes", pages > 0 && page > 0 ? static_cast<std::int64_t>(pages) * page : 0},
          {"os", named ? std::string(u.sysname) + " " + u.release + " " + u.machine : std::string("unknown")}};
}

#ifndef FLASHLAB_BUILD_TYPE
#define FLASHLAB_BUILD_TYPE ""
#define FLASHLAB_CXX_COMPILER ""
#define FLASHLAB_CXX_FLAGS ""
#define FLASHLAB_EIGEN_VERSION ""
#endif

// How the binary was built (CMake's compilers, flags, build type, library versions).
nlohmann::json build_block() {
  nlohmann::json b = {{"git_commit", build_commit()},
                      {"build_type", FLASHLAB_BUILD_TYPE},
                      {"cxx_compiler", FLASHLAB_CXX_COMPILER},
                      {"cxx_flags", FLASHLAB_CXX_FLAGS},
                      {"eigen", FLASHLAB_EIGEN_VERSION}};
#if defined(FLASHLAB_CUDA_COMPILER)
  b["cuda_compiler"] = FLASHLAB_CUDA_COMPILER;
  b["cuda_flags"] = FLASHLAB_CUDA_FLAGS;
  b["cuda_architectures"] = FLASHLAB_CUDA_ARCHITECTURES;
#endif
#if defined(FLASHLAB_TILE_SWEEP)
  b["tile_sweep"] = true;
#else
  b["tile_sweep"] = false;
#endif
  return b;
}

void write_atomically(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary);
    out << text << '\n';
    if (!out) throw std::runtime_error("cannot write " + temporary.string());
  }
  std::filesystem::rename(temporary, path);
}

}  // namespace

// The working directory is tried first (a checkout copied elsewhere), then the tree the binary was built from.
std::string git_commit() {
  std::string dir = ".";
  std::string commit = command_output("git rev-parse --verify --quiet HEAD 2>/dev/null");
  if (commit.empty()) {
    dir = FLASHLAB_SOURCE_DIR;
    commit = command_output("git -C '" + dir + "' rev-parse --verify --quiet HEAD 2>/dev/null");
  }
  if (commit.empty()) return "unknown";
  if (!command_output("git -C '" + dir + "' status --porcelain --untracked-files=no 2>/dev/null").empty()) {
    commit += "+dirty";
  }
  return commit;
}

std::string recorded_suite_hash(const std::filesystem::path& run_json) {
  std::ifstream in(run_json);
  if (!in) return {};
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("suite_hash") || !j["suite_hash"].is_string()) return {};
  return j["suite_hash"].get<std::string>();
}

std::string utc_time(const char* format) {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[64];
  std::strftime(text, sizeof text, format, &tm);
  return text;
}

RunInfo start_run_info(const std::filesystem::path& path, const Suite& suite, const std::string& run_id,
                       const RunOptions& options, bool gpu) {
  nlohmann::json j;
  if (options.resume && std::filesystem::exists(path)) {
    std::ifstream in(path);
    j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) j = nlohmann::json::object();
    j["resumed"].push_back({{"at", utc_now()}, {"command", options.command_line}});
  } else {
    j["started"] = utc_now();
    j["command"] = options.command_line;
  }
  j["suite"] = suite.settings.name;
  j["description"] = suite.settings.description;
  j["run_id"] = run_id;
  j["suite_file"] = suite.path.string();
  j["suite_hash"] = suite.text_hash;
  j["seed"] = suite.settings.seed;
  j["warmup"] = suite.settings.warmup;
  j["repetitions"] = suite.settings.repetitions;
  j["filter"] = options.filter;
  j["shard"] = options.shard;
  j["flops_convention"] = std::string(kFlopsConvention);
  j["git_commit"] = git_commit();
  j["git_dirty"] = j["git_commit"].get<std::string>().ends_with("+dirty");
  j["build"] = build_block();
  if (const kernels::Fault fault = injected_fault(); fault != kernels::Fault::none) j["fault"] = name(fault);  // test-only
  j["host"] = host_block();
  j["suite_copy"] = "suite.toml";  // the suite file's bytes, beside run.json
  j["finished"] = nullptr;
  j["device"] = gpu ? nlohmann::json::parse(device_block_json()) : nlohmann::json(nullptr);
  if (j["device"].is_object()) {
    j["device"]["clocks_before"] = j["device"]["clocks"];
    j["device"].erase("clocks");
  }
  write_atomically(path, j.dump(2));
  return {path, j.dump()};
}

void finish_run_info(const RunInfo& info, std::size_t rows, std::size_t ran, std::size_t skipped) {
  nlohmann::json j = nlohmann::json::parse(info.json);
  j["finished"] = utc_now();
  j["rows"] = {{"selected", rows}, {"written", ran}, {"already_present", skipped}};
  if (j["device"].is_object()) {
    const nlohmann::json after = nlohmann::json::parse(device_block_json());
    if (after.is_object() && after.contains("clocks")) j["device"]["clocks_after"] = after["clocks"];
  }
  write_atomically(info.path, j.dump(2));
}

#if !defined(FLASHLAB_WITH_CUDA)
std::string device_block_json() { return "null"; }
#endif

}  // namespace flashlab::harness
