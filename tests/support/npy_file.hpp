// Reading a .npy file (format version 1.0) in tests: its header text and its payload bytes.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace flashlab::test {

struct NpyFile {
  std::string header;   // magic, version, length and the dictionary ('descr', 'shape', ...), padded
  std::string payload;  // the array's bytes
};

// Empty header and payload for a missing or truncated file.
inline NpyFile read_npy(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10) return {};
  const std::size_t length = 10 + (static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8));
  if (bytes.size() < length) return {};
  return {bytes.substr(0, length), bytes.substr(length)};
}

}  // namespace flashlab::test
