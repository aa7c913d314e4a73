// main() of the GPU tests: exits with 77 (CTest: skipped) when there is no CUDA device.
#include <cuda_runtime.h>

#include <cstdio>

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("no CUDA device (%s): GPU tests skipped\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "device count 0");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("CUDA device 0: %s, compute capability %d.%d\n", prop.name, prop.major, prop.minor);
  return Catch::Session().run(argc, argv);
}
