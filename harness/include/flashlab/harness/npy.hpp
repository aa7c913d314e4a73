// NumPy .npy files (format version 1.0) for --save-tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace flashlab::harness {

// Writes `data` (C order) with NumPy dtype descriptor `descr` (e.g. "<f2", "<f4", "<f8") and `shape`.
void write_npy(const std::filesystem::path& path, const void* data, const std::string& descr,
               const std::vector<std::int64_t>& shape);

}  // namespace flashlab::harness
