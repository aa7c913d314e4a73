// Qualifiers for code that must compile, and give the same bits, on the host and in CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define FL_HOST_DEVICE __host__ __device__
#else
#define FL_HOST_DEVICE
#endif
