// flashlab error types: one exception type per kind of failure.
//
// The CLI turns each into a one-line message and a distinct exit code; helpers never print or exit.
#pragma once

#include <stdexcept>
#include <string>

namespace flashlab {

// A Problem (or a tensor handed with it) that no variant could run: the message names the field,
// the value found and what is allowed.
class InvalidProblem : public std::invalid_argument {
 public:
  InvalidProblem(std::string field, const std::string& message)
      : std::invalid_argument(message), field_(std::move(field)) {}
  // The offending field, e.g. "heads_kv" or "cu_seqlens_q[2]".
  [[nodiscard]] const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

// A valid request that this build, variant or device does not support (dtype, head dim, GPU too old).
class Unsupported : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An allocation that failed; becomes an `oom` row in a sweep.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A CUDA runtime/driver/library call that failed: the message names the call and the source location.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace flashlab
