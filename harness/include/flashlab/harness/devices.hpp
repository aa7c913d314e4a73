// `flashlab run SUITE --devices 0,1,...`: the suite's shards in parallel, one process per GPU, merged into one run
// folder (documented in harness/README.md).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "flashlab/harness/runner.hpp"

namespace flashlab::harness {

// Runs `flashlab run` once per device with --shard i/n and CUDA_VISIBLE_DEVICES set to device i, each into its own
// shard folder OUT/<suite>/<run-id>-shard-i-n, waits for all, then writes OUT/<suite>/<run-id>/results.csv: every
// shard's rows in row order, and run.json: the first shard's with the devices and shard folders added. `program` is
// this executable. Returns the worst exit code of the shards (3 > 2 > 1 > 0), or kExitUsage (one line on stderr)
// for devices that are not distinct non-empty names, or together with --shard.
int run_on_devices(const RunOptions& options, const std::vector<std::string>& devices, const std::string& program);

// Merges the shard folders <run_dir>-shard-i-n (i < n) of one run into run_dir: results.csv with every shard's rows
// in row order (written whole, then renamed: never half a file), run.json from the first shard with the shard
// folders (and `devices`) added, suite.toml. Returns the rows merged. Throws std::runtime_error naming the folders
// when a shard's results.csv is missing (with require_all; else when none exists) or two shards hold the same row.
std::size_t merge_shards(const std::filesystem::path& run_dir, std::size_t n, const std::vector<std::string>& devices,
                         bool require_all);

// "0,1,3" -> {"0", "1", "3"}; throws std::invalid_argument for an empty entry or a repeated one.
[[nodiscard]] std::vector<std::string> parse_devices(const std::string& text);

}  // namespace flashlab::harness
