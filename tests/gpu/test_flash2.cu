// GPU tests of the flash2 variant (forward): against the fp64 Eigen reference on identical inputs (generated on the
// device, filled on the host from the same seed and dtype rounding) under the baseline rule of DESIGN.md §5, with
// the standard variant run on the same inputs as the baseline; support rules and launch-time checks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace {

using namespace flashlab;
using kernels::AttentionParams;
using kernels::LaunchContext;

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) FAIL(std::string(call) + ": " + cudaGetErrorString(status));
}
#define CHECK_CUDA(call) check_cuda((call), #call)

const kernels::Variant& variant(const std::string& id) {
  for (const kernels::Variant& v : kernels::gpu_variants()) {
    if (v.id == id) return v;
  }
  FAIL("no variant '" << id << "' in gpu_variants()");
  throw std::logic_error("unreachable");
}

// Workspace allocator around cudaMalloc/cudaFree that counts calls and live allocations.
class CountingAllocator final : public kernels::Allocator {
 public:
  ~CountingAllocator() override {
    for (auto& [pointer, bytes] : sizes_) cudaFree(pointer);
  }
  void* allocate(std::size_t bytes, std::string_view what) override {
    ++calls_;
    void* pointer = nullptr;
    if (cudaMalloc(&pointer, bytes) != cudaSuccess) {
      cudaGetLastError();
      throw OutOfMemory("cudaMalloc of " + std::to_string(bytes) + " bytes for " + std::string(what));
    }
    sizes_[pointer] = bytes;
    return pointer;
  }
  void release(void* pointer) noexcept override {
    auto it = sizes_.find(pointer);
    if (it == sizes_.end()) return;
    cudaFree(pointer);
    sizes_.erase(it);
  }
  [[nodiscard]] int calls() const { return calls_; }
  [[nodiscard]] std::size_t live_count() const { return sizes_.size(); }

 private:
  int calls_ = 0;
  std::map<void*, std::size_t> sizes_;
};

class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    if (bytes) CHECK_CUDA(cudaMalloc(&data_, bytes));
  }
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  [[nodiscard]] void* get() const { return data_; }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }
  [[nodiscard]] std::vector<unsigned char> to_host() const {
    std::vector<unsigned char> host(bytes_);
    if (bytes_) CHECK_CUDA(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  void* data_ = nullptr;
  std::size_t bytes_;
};

class Stream {
 public:
  Stream() { CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  [[nodiscard]] void* get() const { return stream_; }
  void sync() const { CHECK_CUDA(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

// Device tensors of one forward (problem, dtype): contiguous BSHD inputs from the generator, outputs poisoned.
struct DeviceTensors {
  Problem problem;
  DType dtype;
  AttentionShapes shapes;
  DeviceBuffer q, k, v, o, lse, cu_q, cu_k;

  static std::size_t bytes(const Shape<4>& s, DType dtype) {
    return static_cast<std::size_t>(element_count<4>(s)) * size_bytes(dtype);
  }
  static std::size_t cu_bytes(const Problem& p) { return p.is_varlen() ? (p.batch + 1) * sizeof(std::int32_t) : 0; }

  DeviceTensors(const Problem& p, DType t, std::uint64_t seed, void* stream)
      : problem(p),
        dtype(t),
        shapes(attention_shapes(p)),
        q(bytes(shapes.q, t)),
        k(bytes(shapes.k, t)),
        v(bytes(shapes.v, t)),
        o(bytes(shapes.o, t)),
        lse(static_cast<std::size_t>(element_count<3>(shapes.lse)) * sizeof(float)),
        cu_q(cu_bytes(p)),
        cu_k(cu_bytes(p)) {
    kernels::generate(q.get(), t, element_count<4>(shapes.q), seed, TensorId::q, Distribution::normal, stream);
    kernels::generate(k.get(), t, element_count<4>(shapes.k), seed, TensorId::k, Distribution::normal, stream);
    kernels::generate(v.get(), t, element_count<4>(shapes.v), seed, TensorId::v, Distribution::normal, stream);
    poison(stream);
    if (p.is_varlen()) {
      const std::vector<std::int32_t> cq(p.cu_seqlens_q.begin(), p.cu_seqlens_q.end());
      const std::vector<std::int32_t> ck(p.cu_seqlens_k.begin(), p.cu_seqlens_k.end());
      CHECK_CUDA(cudaMemcpy(cu_q.get(), cq.data(), cu_q.bytes(), cudaMemcpyHostToDevice));
      CHECK_CUDA(cudaMemcpy(cu_k.get(), ck.data(), cu_k.bytes(), cudaMemcpyHostToDevice));
    }
  }

  // NaN in every output element, so an element a kernel does not write shows up
  void poison(void* stream) {
    kernels::fill_nan(o.get(), dtype, element_count<4>(shapes.o), stream);
    kernels::fill_nan(lse.get(), DType::fp32, element_count<3>(shapes.lse), stream);
  }

  [[nodiscard]] AttentionParams params() const {
    AttentionParams a;
    a.problem = problem;
    a.dtype = dtype;
    const std::int64_t tokens_q = shapes.q[1], tokens_k = shapes.k[1];
    a.q = q.get();
    a.k = k.get();
    a.v = v.get();
    a.o = o.get();
    a.lse = static_cast<float*>(lse.get());
    a.q_strides = kernels::contiguous_bshd(tokens_q, problem.heads, problem.head_dim);
    a.k_strides = kernels::contiguous_bshd(tokens_k, problem.heads_kv, problem.head_dim);
    a.v_strides = kernels::contiguous_bshd(tokens_k, problem.heads_kv, problem.dv());
    a.o_strides = kernels::contiguous_bshd(tokens_q, problem.heads, problem.dv());
    a.cu_seqlens_q = static_cast<const std::int32_t*>(cu_q.get());
    a.cu_seqlens_k = static_cast<const std::int32_t*>(cu_k.get());
    return a;
  }
};

std::vector<double> decode(const DeviceBuffer& buffer, DType dtype) {
  const std::vector<unsigned char> raw = buffer.to_host();
  std::vector<double> values(raw.size() / size_bytes(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = load(raw.data(), static_cast<std::int64_t>(i), dtype);
  return values;
}

std::int64_t count_nan(const std::vector<double>& x) {
  return std::count_if(x.begin(), x.end(), [](double value) { return std::isnan(value); });
}

std::int64_t bit_mismatches(const std::vector<double>& got, const std::vector<double>& want) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < got.size(); ++i) n += !(got[i] == want[i]);
  return n;
}

// Relative Frobenius and max abs error over the entries where `want` is finite; entries where it is -inf (LSE of
// fully masked rows) must be -inf in `got` too, counted in `inf_mismatches`.
struct Error {
  double rel_fro = 0;
  double max_abs = 0;
  double want_max = 0;  // max |want| over the finite entries
  std::int64_t inf_mismatches = 0;
};

Error compare(const std::vector<double>& got, const std::vector<double>& want) {
  Error e;
  double diff2 = 0, want2 = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i])) {
      e.inf_mismatches += got[i] != want[i];
      continue;
    }
    const double d = got[i] - want[i];
    diff2 += d * d;
    want2 += want[i] * want[i];
    e.max_abs = std::max(e.max_abs, std::abs(d));
    e.want_max = std::max(e.want_max, std::abs(want[i]));
  }
  e.rel_fro = want2 > 0 ? std::sqrt(diff2 / want2) : (diff2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  return e;
}

// The reference rounded to the output dtype, for the floor of the baseline rule.
std::vector<double> rounded(const std::vector<double>& x, DType dtype) {
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = std::isinf(x[i]) ? x[i] : round_to(x[i], dtype);
  return r;
}

std::int64_t fully_masked_rows(const Problem& p) {
  std::int64_t rows = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    for (std::int64_t i = 0; i < s.seqlen_q; ++i) rows += p.key_range(i, s.seqlen_q, s.seqlen_k).empty();
  }
  return rows * p.heads;
}

struct Case {
  std::string name;
  Problem problem;
};

Problem dense(std::int64_t batch, std::int64_t heads, std::int64_t heads_kv, std::int64_t seqlen_q,
              std::int64_t seqlen_k, std::int64_t head_dim) {
  Problem p;
  p.batch = batch;
  p.heads = heads;
  p.heads_kv = heads_kv;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.head_dim = head_dim;
  return p;
}

Problem causal(Problem p) {
  p.causal = true;
  return p;
}

Problem windowed(Problem p, std::int64_t left, std::int64_t right) {
  p.window = {left, right};
  return p;
}

// Awkward lengths on purpose (N in {1, 17, 97, 128, 129, 255, 1025, 4097}: partial query and key tiles, one-row
// sequences, tile multiples), every head dim, each mask kind, N_q != N_k both ways, GQA, MQA and varlen.
std::vector<Case> accuracy_cases() {
  std::vector<Case> cases;
  cases.push_back({"dense N=1, d=32", dense(2, 2, 2, 1, 1, 32)});
  cases.push_back({"dense N=17, d=64", dense(2, 3, 3, 17, 17, 64)});
  cases.push_back({"dense N=97, d=96", dense(1, 2, 2, 97, 97, 96)});
  cases.push_back({"causal N=128, d=128", causal(dense(2, 2, 2, 128, 128, 128))});
  cases.push_back({"dense N=129, d=256", dense(1, 2, 2, 129, 129, 256)});
  cases.push_back({"causal N=255, d=256", causal(dense(1, 2, 2, 255, 255, 256))});
  cases.push_back({"window (16, 8), N=255, d=64", windowed(dense(1, 2, 2, 255, 255, 64), 16, 8)});
  cases.push_back({"window (32, 0), N=1025, d=128", windowed(dense(1, 2, 2, 1025, 1025, 128), 32, 0)});
  cases.push_back({"window (16, 8), N=1025, d=32", windowed(dense(1, 1, 1, 1025, 1025, 32), 16, 8)});
  cases.push_back({"causal N=4097, d=64", causal(dense(1, 1, 1, 4097, 4097, 64))});
  cases.push_back({"dense N=1025, d=96", dense(1, 1, 1, 1025, 1025, 96)});
  cases.push_back({"causal N_q=129 > N_k=17 (fully masked rows)", causal(dense(2, 2, 2, 129, 17, 64))});
  cases.push_back({"causal N_q=1025 > N_k=255 (fully masked blocks)", causal(dense(1, 2, 2, 1025, 255, 128))});
  cases.push_back({"causal N_q=17 < N_k=129", causal(dense(2, 2, 2, 17, 129, 32))});
  cases.push_back({"causal N_q=97 < N_k=1025, window (32, 0)", windowed(causal(dense(1, 2, 2, 97, 1025, 64)), 32, 0)});
  cases.push_back({"window (16, 8), N_q=255 > N_k=97", windowed(dense(1, 2, 2, 255, 97, 96), 16, 8)});
  cases.push_back({"GQA 4:1, N=129, d=64", dense(2, 8, 2, 129, 129, 64)});
  cases.push_back({"GQA 4:1 causal, N=255, d=96", causal(dense(1, 8, 2, 255, 255, 96))});
  cases.push_back({"MQA 4:1 causal, N=1025, d=128", causal(dense(1, 4, 1, 1025, 1025, 128))});
  cases.push_back({"MQA 2:1, N_q=97, N_k=255, d=256", dense(1, 2, 1, 97, 255, 256)});
  cases.push_back(
      {"varlen GQA 2:1 with empty entries", Problem::varlen(4, 2, 64, {17, 0, 97, 128, 1}, {33, 5, 0, 129, 1025})});
  cases.push_back(
      {"varlen causal, N_q != N_k, empty entry", causal(Problem::varlen(2, 2, 32, {129, 17, 0}, {17, 129, 3}))});
  cases.push_back({"varlen window (16, 8), d=128",
                   windowed(Problem::varlen(2, 1, 128, {255, 0, 64, 129}, {255, 17, 64, 97}), 16, 8)});
  return cases;
}

constexpr std::uint64_t kSeed = 20261122;

void check_case(const Case& c, DType dtype) {
  INFO(c.name << " [" << c.problem.describe() << "] " << name(dtype));
  const Problem& p = c.problem;
  const kernels::Variant& flash = variant("flash2");
  const kernels::Variant& baseline = variant("standard");
  REQUIRE(flash.supports(p, dtype, Pass::fwd).ok);
  REQUIRE(baseline.supports(p, dtype, Pass::fwd).ok);
  Stream stream;
  DeviceTensors t(p, dtype, kSeed, stream.get());
  const AttentionParams params = t.params();

  // the baseline: standard attention in the same dtype on the same inputs
  CountingAllocator baseline_allocator;
  baseline.forward(params, {baseline_allocator, stream.get()});
  stream.sync();
  CHECK(baseline_allocator.live_count() == 0);
  const std::vector<double> o_std = decode(t.o, dtype), lse_std = decode(t.lse, DType::fp32);

  t.poison(stream.get());
  CountingAllocator allocator;
  flash.forward(params, {allocator, stream.get()});
  stream.sync();
  CHECK(allocator.calls() == 0);  // the forward allocates nothing (workspace model 0)
  CHECK(flash.workspace_model(p, dtype, Pass::fwd) == 0);
  const std::vector<double> o = decode(t.o, dtype), lse = decode(t.lse, DType::fp32);

  reference::AttentionData<double> ref(p);
  ref.randomize({kSeed, Distribution::normal, dtype});
  ref.run_forward();
  CHECK(bit_mismatches(decode(t.q, dtype), ref.q.values()) == 0);
  CHECK(bit_mismatches(decode(t.k, dtype), ref.k.values()) == 0);
  CHECK(bit_mismatches(decode(t.v, dtype), ref.v.values()) == 0);

  // every output element written, none NaN
  CHECK(count_nan(o) == 0);
  CHECK(count_nan(lse) == 0);

  // baseline rule: err_flash <= 2 err_standard + floor, floor = 2 x the reference's rounding to the output dtype
  const std::vector<double>& o_ref = ref.o.values();
  const std::vector<double>& lse_ref = ref.lse.values();
  const Error e_o = compare(o, o_ref), e_o_std = compare(o_std, o_ref);
  const Error e_o_round = compare(rounded(o_ref, dtype), o_ref);
  const Error e_lse = compare(lse, lse_ref), e_lse_std = compare(lse_std, lse_ref);
  const double o_bound = 2 * e_o_std.rel_fro + 2 * e_o_round.rel_fro;
  const double lse_bound = 2 * e_lse_std.max_abs + 1e-5 * std::max(1.0, e_lse.want_max);
  INFO("O rel. Frobenius: flash2 " << e_o.rel_fro << ", standard " << e_o_std.rel_fro << ", rounding "
                                   << e_o_round.rel_fro << " -> bound " << o_bound << "; LSE max abs: flash2 "
                                   << e_lse.max_abs << ", standard " << e_lse_std.max_abs << " -> bound " << lse_bound);
  CHECK(e_o.rel_fro <= o_bound);
  CHECK(e_lse.max_abs <= lse_bound);
  CHECK(e_lse.inf_mismatches == 0);

  // fully masked rows: LSE = -inf and O = 0 exactly
  const std::int64_t masked = fully_masked_rows(p);
  const Shape<3> ls = t.shapes.lse;  // [B', H, T]
  std::int64_t lse_inf = 0, nonzero = 0;
  for (std::int64_t b = 0; b < ls[0]; ++b) {
    for (std::int64_t h = 0; h < ls[1]; ++h) {
      for (std::int64_t i = 0; i < ls[2]; ++i) {
        if (!std::isinf(lse[static_cast<std::size_t>((b * ls[1] + h) * ls[2] + i)])) continue;
        ++lse_inf;
        for (std::int64_t col = 0; col < p.dv(); ++col) {
          nonzero += o[static_cast<std::size_t>(((b * ls[2] + i) * ls[1] + h) * p.dv() + col)] != 0;
        }
      }
    }
  }
  CHECK(lse_inf == masked);
  CHECK(nonzero == 0);
}

}  // namespace

TEST_CASE("flash2 is registered with its support rules", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  CHECK(v.device == kernels::Device::cuda);
  CHECK_FALSE(v.materializes);
  CHECK_FALSE(v.description.empty());
  CHECK_FALSE(v.supported.empty());
  const Problem p = dense(1, 2, 2, 64, 64, 64);
  for (std::int64_t d : {32, 64, 96, 128, 256}) {
    Problem q = p;
    q.head_dim = d;
    for (DType dtype : {DType::fp16, DType::bf16}) CHECK(v.supports(q, dtype, Pass::fwd).ok);
  }
  for (DType dtype : {DType::fp32, DType::fp64, DType::fp8_e4m3}) {
    INFO(name(dtype));
    const kernels::Support s = v.supports(p, dtype, Pass::fwd);
    CHECK_FALSE(s.ok);
    CHECK(s.reason.find("flash2 runs fp16 and bf16") != std::string::npos);
  }
  Problem odd = p;
  odd.head_dim = 40;
  const kernels::Support d40 = v.supports(odd, DType::fp16, Pass::fwd);
  CHECK_FALSE(d40.ok);
  CHECK(d40.reason.find("head_dim = 40") != std::string::npos);
  odd.head_dim = 64;
  odd.head_dim_v = 32;
  const kernels::Support dv = v.supports(odd, DType::bf16, Pass::fwd);
  CHECK_FALSE(dv.ok);
  CHECK(dv.reason.find("head_dim_v") != std::string::npos);
  for (Pass pass : {Pass::bwd, Pass::fwdbwd}) {
    CHECK(v.supports(p, DType::fp16, pass).ok);
    CHECK_FALSE(v.supports(p, DType::fp32, pass).ok);
    CHECK_FALSE(v.supports(odd, DType::bf16, pass).ok);
  }
  CHECK(v.workspace_model(p, DType::fp16, Pass::fwd) == 0);
  CHECK(v.workspace_model(p, DType::fp16, Pass::fwdbwd) == v.workspace_model(p, DType::fp16, Pass::bwd));
}

TEST_CASE("flash2 forward matches the fp64 reference under the baseline rule", "[gpu][flash2]") {
  for (const Case& c : accuracy_cases()) {
    for (DType dtype : {DType::fp16, DType::bf16}) check_case(c, dtype);
  }
}

TEST_CASE("flash2 rejects what it cannot run at launch", "[gpu][flash2]") {
  const kernels::Variant& v = variant("flash2");
  const Problem p = dense(1, 2, 2, 65, 65, 64);
  Stream stream;
  DeviceTensors t(p, DType::fp16, 3, stream.get());
  CountingAllocator allocator;
  const LaunchContext ctx{allocator, stream.get()};
  {
    AttentionParams a = t.params();
    a.o = static_cast<char*>(a.o) + 2;  // one element off 16-byte alignment
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.k_strides.token += 4;  // not a multiple of 8 elements
    CHECK_THROWS_AS(v.forward(a, ctx), InvalidProblem);
  }
  {
    AttentionParams a = t.params();
    a.dtype = DType::fp32;
    CHECK_THROWS_AS(v.forward(a, ctx), Unsupported);
  }
  CHECK_THROWS_AS(v.backward(t.params(), ctx), InvalidProblem);  // no dO, dQ, dK, dV given
  stream.sync();
  CHECK(allocator.calls() == 0);
  // nothing was launched: the outputs are still poisoned
  CHECK(count_nan(decode(t.o, DType::fp16)) == static_cast<std::int64_t>(t.o.bytes() / 2));
}
