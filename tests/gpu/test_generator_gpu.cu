// The counter-based generator gives the same bits on the GPU as on the host.
#include <cuda_runtime.h>

#include <bit>
#include <cstdint>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/kernels/device.hpp"

namespace {

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) FAIL(std::string(call) + ": " + cudaGetErrorString(status));
}
#define CHECK_CUDA(call) check_cuda((call), #call)

__global__ void generate(double* out, std::uint64_t count, std::uint64_t first, std::uint64_t seed,
                         std::uint32_t tensor, flashlab::Distribution distribution, flashlab::DType dtype,
                         flashlab::InputLayout layout) {
  const std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = flashlab::input_value(seed, tensor, first + i, distribution, dtype, layout);
}

__global__ void round_all(const double* in, double* out, std::uint64_t count, flashlab::DType dtype) {
  const std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x;
  if (i < count) out[i] = flashlab::round_to(in[i], dtype);
}

std::vector<double> on_device(std::uint64_t count, std::uint64_t first, std::uint64_t seed, std::uint32_t tensor,
                              flashlab::Distribution distribution, flashlab::DType dtype,
                              flashlab::InputLayout layout) {
  double* device = nullptr;
  CHECK_CUDA(cudaMalloc(&device, count * sizeof(double)));
  generate<<<static_cast<unsigned>((count + 255) / 256), 256>>>(device, count, first, seed, tensor, distribution,
                                                                 dtype, layout);
  CHECK_CUDA(cudaGetLastError());
  std::vector<double> host(count);
  CHECK_CUDA(cudaMemcpy(host.data(), device, count * sizeof(double), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaFree(device));
  return host;
}

}  // namespace

TEST_CASE("GPU and host generate the same bits", "[gpu][generator]") {
  using namespace flashlab;
  constexpr std::uint64_t kCount = 1 << 20;
  constexpr std::uint64_t kSeed = 0x1234'5678'9abcULL;
  // 3 heads of 40 channels: the structured distributions decode tokens, heads and channels that are not
  // powers of two, and 2^20 elements cover 8738 tokens, past the ramp's period.
  constexpr InputLayout kLayout{3, 40};
  for (Distribution distribution : kDistributions) {
    // Q and K carry the structure; V (and dO) the plain normal draw.
    for (TensorId tensor : {TensorId::q, TensorId::k, TensorId::v}) {
      // low indices and indices past 2^32 (the counter's second word)
      for (std::uint64_t first : {std::uint64_t{0}, (std::uint64_t{1} << 33) - 17}) {
        const auto id = static_cast<std::uint32_t>(tensor);
        // The host samples once per stream (input_value is round_to of the sample), so the 192 comparisons
        // cost 48 host passes, not 192.
        std::vector<double> exact(kCount);
        for (std::uint64_t i = 0; i < kCount; ++i) exact[i] = sample(kSeed, id, first + i, distribution, kLayout);
        for (DType dtype : {DType::fp64, DType::fp32, DType::fp16, DType::bf16}) {
          INFO(name(distribution) << " tensor " << id << " " << name(dtype) << " from index " << first);
          const std::vector<double> gpu = on_device(kCount, first, kSeed, id, distribution, dtype, kLayout);
          std::uint64_t mismatches = 0;
          for (std::uint64_t i = 0; i < kCount; ++i) {
            const double host = round_to(exact[i], dtype);
            mismatches += std::bit_cast<std::uint64_t>(host) != std::bit_cast<std::uint64_t>(gpu[i]);
          }
          CHECK(mismatches == 0);
        }
      }
    }
  }
}

TEST_CASE("kernels::generate writes what fill() writes, layout included", "[gpu][generator]") {
  using namespace flashlab;
  // [B, N, H, d] with N, H and d not powers of two: the layout kernels::generate is given must decode tokens,
  // heads and channels as fill() derives them from the shape.
  const Shape<4> shape{2, 97, 3, 40};
  const std::int64_t count = element_count<4>(shape);
  constexpr std::uint64_t kSeed = 77;
  for (Distribution distribution : kDistributions) {
    for (TensorId tensor : {TensorId::q, TensorId::k, TensorId::v}) {
      for (DType dtype : {DType::fp64, DType::fp32, DType::fp16, DType::bf16}) {
        INFO(name(distribution) << " tensor " << static_cast<std::uint32_t>(tensor) << " " << name(dtype));
        Tensor<double, 4> expected(shape);
        fill(expected.view(), tensor, {kSeed, distribution, dtype});
        const auto bytes = static_cast<std::size_t>(count) * static_cast<std::size_t>(size_bytes(dtype));
        void* device = nullptr;
        CHECK_CUDA(cudaMalloc(&device, bytes));
        kernels::generate(device, dtype, count, kSeed, tensor, distribution, InputLayout{shape[2], shape[3]}, nullptr);
        std::vector<unsigned char> stored(bytes);
        CHECK_CUDA(cudaMemcpy(stored.data(), device, bytes, cudaMemcpyDeviceToHost));
        CHECK_CUDA(cudaFree(device));
        std::int64_t mismatches = 0;
        for (std::int64_t i = 0; i < count; ++i) {
          const double gpu = load(stored.data(), i, dtype);
          mismatches += std::bit_cast<std::uint64_t>(gpu) !=
                        std::bit_cast<std::uint64_t>(expected.values()[static_cast<std::size_t>(i)]);
        }
        CHECK(mismatches == 0);
      }
    }
  }
}

TEST_CASE("GPU and host round to fp16, bf16, fp32 and fp8 alike", "[gpu][generator]") {
  using namespace flashlab;
  // Random bit patterns cover every exponent, subnormals, infinities and NaNs.
  std::vector<double> inputs;
  std::uint64_t state = 0x9e3779b97f4a7c15ULL;
  for (int i = 0; i < (1 << 18); ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const std::uint64_t bits = state ^ (state >> 29);
    // squeeze the exponent into [-160, 160] half the time, so the formats' ranges are hit often
    const double x = std::bit_cast<double>(bits);
    inputs.push_back(i % 2 ? x : std::ldexp(std::bit_cast<double>((bits & 0x800FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL),
                                            static_cast<int>(bits % 321) - 160));
  }
  const std::uint64_t count = inputs.size();
  double *in = nullptr, *out = nullptr;
  CHECK_CUDA(cudaMalloc(&in, count * sizeof(double)));
  CHECK_CUDA(cudaMalloc(&out, count * sizeof(double)));
  CHECK_CUDA(cudaMemcpy(in, inputs.data(), count * sizeof(double), cudaMemcpyHostToDevice));
  for (DType dtype : {DType::fp32, DType::fp16, DType::bf16, DType::fp8_e4m3}) {
    INFO(name(dtype));
    round_all<<<static_cast<unsigned>((count + 255) / 256), 256>>>(in, out, count, dtype);
    CHECK_CUDA(cudaGetLastError());
    std::vector<double> gpu(count);
    CHECK_CUDA(cudaMemcpy(gpu.data(), out, count * sizeof(double), cudaMemcpyDeviceToHost));
    std::uint64_t mismatches = 0;
    for (std::uint64_t i = 0; i < count; ++i) {
      const double host = round_to(inputs[i], dtype);
      const bool both_nan = host != host && gpu[i] != gpu[i];
      mismatches += !both_nan && std::bit_cast<std::uint64_t>(host) != std::bit_cast<std::uint64_t>(gpu[i]);
    }
    CHECK(mismatches == 0);
  }
  CHECK_CUDA(cudaFree(in));
  CHECK_CUDA(cudaFree(out));
}

TEST_CASE("an architecture-specific variant refuses another GPU, naming both", "[gpu][device]") {
  using namespace flashlab;
  const kernels::DeviceInfo info = kernels::device_info(0);
  const int major = info.compute_capability_major, minor = info.compute_capability_minor;
  CHECK_NOTHROW(kernels::require_architecture("probe", major, minor, "this GPU's target"));
  try {
    kernels::require_architecture("probe", major + 1, 0, "sm_" + std::to_string(10 * (major + 1)) + "a");
    FAIL("a GPU of another compute capability was accepted");
  } catch (const Unsupported& e) {
    const std::string what = e.what();
    CHECK(what.find("probe runs on sm_" + std::to_string(10 * (major + 1)) + "a GPUs") != std::string::npos);
    CHECK(what.find(info.name + " (" + std::to_string(major) + "." + std::to_string(minor) + ")") != std::string::npos);
  }
}

TEST_CASE("kernels::generate draws an unpadded tensor's tokens as the padded tensor's valid tokens",
          "[gpu][generator][padding]") {
  using namespace flashlab;
  // the token remap on the device (a device array of source tokens) gives what fill() gives on the host
  Problem p;
  p.batch = 3;
  p.heads = 3;
  p.seqlen_q = p.seqlen_k = 97;
  p.head_dim = 40;
  p.key_padding = KeyPadding::left;
  p.valid_lengths = {97, 0, 30};
  const std::vector<std::int64_t> source = p.padded_tokens();
  const Shape<4> shape = attention_shapes(p.unpadded()).q;
  const std::int64_t count = element_count<4>(shape);
  void* device_source = nullptr;
  CHECK_CUDA(cudaMalloc(&device_source, source.size() * sizeof(std::int64_t)));
  CHECK_CUDA(cudaMemcpy(device_source, source.data(), source.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice));
  for (Distribution distribution : kDistributions) {
    INFO(name(distribution));
    InputSpec spec{9, distribution, DType::bf16};
    spec.token_source = source;
    Tensor<double, 4> expected(shape);
    fill(expected.view(), TensorId::k, spec);
    void* device = nullptr;
    CHECK_CUDA(cudaMalloc(&device, static_cast<std::size_t>(count) * sizeof(double)));
    const InputLayout layout{shape[2], shape[3], static_cast<const std::int64_t*>(device_source)};
    kernels::generate(device, DType::fp64, count, 9, TensorId::k, distribution, layout, nullptr);
    // fp64 storage of the bf16-rounded values: generate rounds to the dtype it stores, so draw fp64 and round here
    std::vector<double> got(static_cast<std::size_t>(count));
    CHECK_CUDA(cudaMemcpy(got.data(), device, got.size() * sizeof(double), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaFree(device));
    std::int64_t mismatches = 0;
    for (std::size_t i = 0; i < got.size(); ++i) mismatches += round_to(got[i], DType::bf16) != expected.values()[i];
    CHECK(mismatches == 0);
  }
  CHECK_CUDA(cudaFree(device_source));
}

