// Error checks of the CUDA sources of kernels/ (internal header): every CUDA runtime call and every launch goes
// through FL_CUDA_CHECK / FL_CUDA_CHECK_LAUNCH, which throw flashlab::CudaError naming the call, the status and
// the source location.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashlab/core/errors.hpp"

// The file's name without the build machine's directories (GCC >= 12, Clang); older compilers give the path.
#if defined(__FILE_NAME__)
#define FL_SOURCE_FILE __FILE_NAME__
#else
#define FL_SOURCE_FILE __FILE__
#endif

namespace flashlab::kernels::detail {

[[noreturn]] inline void throw_cuda_error(const char* call, const char* status_name, const char* status_text,
                                          const char* file, int line) {
  throw CudaError(std::string(call) + " failed: " + status_name + " (" + status_text + ") at " + file + ":" +
                  std::to_string(line));
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    throw_cuda_error(call, cudaGetErrorName(status), cudaGetErrorString(status), file, line);
  }
}

}  // namespace flashlab::kernels::detail

#define FL_CUDA_CHECK(call) ::flashlab::kernels::detail::check_cuda((call), #call, FL_SOURCE_FILE, __LINE__)
// After a <<<...>>> launch: a launch error (bad configuration, no kernel image for the device) surfaces here.
#define FL_CUDA_CHECK_LAUNCH(kernel_name) \
  ::flashlab::kernels::detail::check_cuda(cudaGetLastError(), "launch of " kernel_name, FL_SOURCE_FILE, __LINE__)
