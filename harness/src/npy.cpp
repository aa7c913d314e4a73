#include "flashlab/harness/npy.hpp"

#include <fstream>
#include <stdexcept>

namespace flashlab::harness {

void write_npy(const std::filesystem::path& path, const void* data, const std::string& descr,
               const std::vector<std::int64_t>& shape) {
  std::string dims;
  std::int64_t count = 1;
  for (std::int64_t extent : shape) {
    dims += std::to_string(extent) + ", ";
    count *= extent;
  }
  if (shape.size() > 1) dims.erase(dims.size() - 1);  // "(a, b)"; a 1-d shape keeps its comma: "(a,)"
  if (shape.size() == 1) dims.erase(dims.size() - 1);
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  const std::size_t element = static_cast<std::size_t>(std::stoi(descr.substr(2)));
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const auto length = static_cast<std::uint16_t>(header.size());
  const char length_bytes[2] = {static_cast<char>(length & 0xFF), static_cast<char>(length >> 8)};
  out.write(length_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(static_cast<std::size_t>(count) * element));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace flashlab::harness
