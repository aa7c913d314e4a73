// run.json: the provenance of a run (device block, exact command, suite hash, seed, flops convention, git
// commit, times), written when the run starts and rewritten (atomically) when it ends.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

#include "flashlab/harness/runner.hpp"
#include "flashlab/harness/suite.hpp"

namespace flashlab::harness {

struct RunInfo {
  std::filesystem::path path;
  std::string json;  // the document as written at the start
};

RunInfo start_run_info(const std::filesystem::path& path, const Suite& suite, const std::string& run_id,
                       const RunOptions& options, bool gpu);
void finish_run_info(const RunInfo& info, std::size_t rows, std::size_t ran, std::size_t skipped);

// The commit of the source tree (the working directory's checkout, else the tree the binary was built from),
// "+dirty" with uncommitted changes, "unknown" without git: run.json's git_commit.
[[nodiscard]] std::string git_commit();

// The commit the binary was built from (harness/build_commit.cmake at build time), "+dirty" when the build compiled
// uncommitted changes, "unknown" without git: run.json's build.git_commit. It differs from git_commit() when the
// binary runs in another checkout or the tree moved on after the build.
[[nodiscard]] const char* build_commit();

// The suite_hash a run.json records; empty when the file, the key or valid JSON is missing.
[[nodiscard]] std::string recorded_suite_hash(const std::filesystem::path& run_json);

// The current UTC time in strftime `format`.
[[nodiscard]] std::string utc_time(const char* format);

// The device block as JSON text ("null" without a usable GPU): name, SM count, L2 and memory size, driver and
// runtime versions, compute capability, current SM and memory clocks.
[[nodiscard]] std::string device_block_json();

}  // namespace flashlab::harness
