// FNV-1a, 64 bits: the suite file's hash in run.json and the output hashes of results.csv (`hash_<t>`), written as
// 16 lowercase hex digits. Not a cryptographic hash: it tells two byte strings apart, nothing more.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace flashlab::harness {

class Fnv1a {
 public:
  void add(const void* data, std::size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < bytes; ++i) {
      hash_ ^= p[i];
      hash_ *= kPrime;
    }
  }
  [[nodiscard]] std::uint64_t value() const { return hash_; }
  [[nodiscard]] std::string hex() const {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string text(16, '0');
    for (int i = 0; i < 16; ++i) text[static_cast<std::size_t>(15 - i)] = kDigits[(hash_ >> (4 * i)) & 0xf];
    return text;
  }

 private:
  static constexpr std::uint64_t kOffsetBasis = 0xcbf29ce484222325ULL;
  static constexpr std::uint64_t kPrime = 0x100000001b3ULL;
  std::uint64_t hash_ = kOffsetBasis;
};

[[nodiscard]] inline std::string fnv1a_hex(const void* data, std::size_t bytes) {
  Fnv1a hash;
  hash.add(data, bytes);
  return hash.hex();
}
[[nodiscard]] inline std::string fnv1a_hex(std::string_view bytes) {
  return fnv1a_hex(bytes.data(), bytes.size());
}

}  // namespace flashlab::harness
