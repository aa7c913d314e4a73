// Shared support of the GPU test files: device buffers and streams, a counting workspace allocator, the tensors
// of one problem generated on the device, decoding and error measures, and small problem builders.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/errors.hpp"
#include "flashlab/core/generator.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/core/tensor.hpp"
#include "flashlab/kernels/attention.hpp"
#include "flashlab/kernels/device.hpp"
#include "flashlab/harness/io_tensors.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/verify.hpp"
#include "flashlab/reference/attention_data.hpp"

namespace flashlab::gpu_test {

using kernels::AttentionParams;
using kernels::LaunchContext;

inline void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) FAIL(std::string(call) + ": " + cudaGetErrorString(status));
}
#define CHECK_CUDA(call) check_cuda((call), #call)

inline const kernels::Variant& variant(const std::string& id) {
  for (const kernels::Variant& v : kernels::gpu_variants()) {
    if (v.id == id) return v;
  }
  FAIL("no variant '" << id << "' in gpu_variants()");
  throw std::logic_error("unreachable");
}

// Workspace allocator around cudaMalloc/cudaFree that counts live bytes, the peak, and live allocations, and can
// refuse the allocation number `fail_at` (0-based) with OutOfMemory, as the harness's allocator does on OOM.
class CountingAllocator final : public kernels::Allocator {
 public:
  explicit CountingAllocator(int fail_at = -1) : fail_at_(fail_at) {}
  ~CountingAllocator() override {
    for (auto& [pointer, bytes] : sizes_) cudaFree(pointer);
  }
  void* allocate(std::size_t bytes, std::string_view what) override {
    if (calls_++ == fail_at_)
      throw OutOfMemory("test allocator refuses " + std::to_string(bytes) + " bytes for " + std::string(what));
    void* pointer = nullptr;
    if (cudaMalloc(&pointer, bytes) != cudaSuccess) {
      cudaGetLastError();
      throw OutOfMemory("cudaMalloc of " + std::to_string(bytes) + " bytes for " + std::string(what));
    }
    sizes_[pointer] = bytes;
    live_ += static_cast<std::int64_t>(bytes);
    peak_ = std::max(peak_, live_);
    return pointer;
  }
  void release(void* pointer) noexcept override {
    auto it = sizes_.find(pointer);
    if (it == sizes_.end()) return;
    cudaFree(pointer);
    live_ -= static_cast<std::int64_t>(it->second);
    sizes_.erase(it);
  }
  void reset_peak() { peak_ = live_; }
  [[nodiscard]] std::int64_t peak() const { return peak_; }
  [[nodiscard]] std::int64_t live_bytes() const { return live_; }
  [[nodiscard]] std::size_t live_count() const { return sizes_.size(); }
  [[nodiscard]] int calls() const { return calls_; }

 private:
  int fail_at_;
  int calls_ = 0;
  std::int64_t live_ = 0;
  std::int64_t peak_ = 0;
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

// Device tensors of one (problem, dtype): contiguous BSHD inputs from the generator, NaN-poisoned outputs.
struct DeviceTensors {
  Problem problem;
  DType dtype;
  AttentionShapes shapes;
  DeviceBuffer q, k, v, d_out, o, lse, dq, dk, dv, cu_q, cu_k, valid;

  static std::size_t bytes(const Shape<4>& s, DType dtype) {
    return static_cast<std::size_t>(element_count<4>(s)) * size_bytes(dtype);
  }
  static std::size_t cu_bytes(const Problem& p) { return p.is_varlen() ? (p.batch + 1) * sizeof(std::int32_t) : 0; }
  static std::size_t valid_bytes(const Problem& p) { return p.is_padded() ? p.batch * sizeof(std::int32_t) : 0; }

  // Inputs Q, K, V, dO of `distribution`; the layouts come from the [slots, tokens, heads, dim] shapes.
  DeviceTensors(const Problem& p, DType t, std::uint64_t seed, void* stream,
                Distribution distribution = Distribution::normal)
      : problem(p),
        dtype(t),
        shapes(attention_shapes(p)),
        q(bytes(shapes.q, t)),
        k(bytes(shapes.k, t)),
        v(bytes(shapes.v, t)),
        d_out(bytes(shapes.o, t)),
        o(bytes(shapes.o, t)),
        lse(static_cast<std::size_t>(element_count<3>(shapes.lse)) * sizeof(float)),
        dq(bytes(shapes.q, t)),
        dk(bytes(shapes.k, t)),
        dv(bytes(shapes.v, t)),
        cu_q(cu_bytes(p)),
        cu_k(cu_bytes(p)),
        valid(valid_bytes(p)) {
    const auto generate = [&](const DeviceBuffer& buffer, const Shape<4>& shape, TensorId id) {
      kernels::generate(buffer.get(), t, element_count<4>(shape), seed, id, distribution,
                        InputLayout{shape[2], shape[3]}, stream);
    };
    generate(q, shapes.q, TensorId::q);
    generate(k, shapes.k, TensorId::k);
    generate(v, shapes.v, TensorId::v);
    generate(d_out, shapes.o, TensorId::d_out);
    poison(stream);
    if (p.is_varlen()) {
      const std::vector<std::int32_t> cq(p.cu_seqlens_q.begin(), p.cu_seqlens_q.end());
      const std::vector<std::int32_t> ck(p.cu_seqlens_k.begin(), p.cu_seqlens_k.end());
      CHECK_CUDA(cudaMemcpy(cu_q.get(), cq.data(), cu_q.bytes(), cudaMemcpyHostToDevice));
      CHECK_CUDA(cudaMemcpy(cu_k.get(), ck.data(), cu_k.bytes(), cudaMemcpyHostToDevice));
    }
    if (p.is_padded()) {
      const std::vector<std::int32_t> lengths(p.valid_lengths.begin(), p.valid_lengths.end());
      CHECK_CUDA(cudaMemcpy(valid.get(), lengths.data(), valid.bytes(), cudaMemcpyHostToDevice));
    }
  }

  // NaN in every output of the forward and the backward, so an element a kernel does not write shows up.
  void poison(void* stream) {
    kernels::fill_nan(o.get(), dtype, element_count<4>(shapes.o), stream);
    kernels::fill_nan(lse.get(), DType::fp32, element_count<3>(shapes.lse), stream);
    kernels::fill_nan(dq.get(), dtype, element_count<4>(shapes.q), stream);
    kernels::fill_nan(dk.get(), dtype, element_count<4>(shapes.k), stream);
    kernels::fill_nan(dv.get(), dtype, element_count<4>(shapes.v), stream);
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
    a.d_out = d_out.get();
    a.dq = dq.get();
    a.dk = dk.get();
    a.dv = dv.get();
    a.d_out_strides = a.o_strides;
    a.dq_strides = a.q_strides;
    a.dk_strides = a.k_strides;
    a.dv_strides = a.v_strides;
    a.cu_seqlens_q = static_cast<const std::int32_t*>(cu_q.get());
    a.cu_seqlens_k = static_cast<const std::int32_t*>(cu_k.get());
    a.valid_lengths = static_cast<const std::int32_t*>(valid.get());
    return a;
  }
};

inline std::vector<double> decode(const DeviceBuffer& buffer, DType dtype) {
  const std::vector<unsigned char> raw = buffer.to_host();
  std::vector<double> values(raw.size() / size_bytes(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = load(raw.data(), static_cast<std::int64_t>(i), dtype);
  return values;
}

inline std::int64_t count_nan(const std::vector<double>& x) {
  return std::count_if(x.begin(), x.end(), [](double value) { return std::isnan(value); });
}

inline std::int64_t bit_mismatches(const std::vector<double>& got, const std::vector<double>& want) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < got.size(); ++i) n += !(got[i] == want[i]);  // exact: both are values of the run's dtype
  return n;
}

// Fully masked rows the problem has (Problem::key_range empty), over sequences and heads.
inline std::int64_t fully_masked_rows(const Problem& p) {
  std::int64_t rows = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Sequence s = p.sequence(b);
    for (std::int64_t i = 0; i < s.seqlen_q; ++i) rows += p.key_range(s, i).empty();
  }
  return rows * p.heads;
}

struct Case {
  std::string name;
  Problem problem;
};

inline Problem dense(std::int64_t batch, std::int64_t heads, std::int64_t heads_kv, std::int64_t seqlen_q,
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

inline Problem causal(Problem p) {
  p.causal = true;
  return p;
}

inline Problem windowed(Problem p, std::int64_t left, std::int64_t right) {
  p.window = {left, right};
  return p;
}

inline Problem key_padded(Problem p, KeyPadding side, std::vector<std::int64_t> valid_lengths) {
  p.key_padding = side;
  p.valid_lengths = std::move(valid_lengths);
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// The one verification rule (harness/verify.hpp), as the harness applies it, on the outputs of a test's run

// The outputs of one run on DeviceTensors, copied to the host and read one head at a time as the harness's
// backends read theirs.
struct HostOutputs {
  Problem problem;
  DType dtype = DType::fp16;
  std::map<std::string, std::vector<double>> tensors;  // o, lse (and dq, dk, dv after a backward)
  [[nodiscard]] harness::FetchOutput fetch() const {
    return [this](const std::string& tensor, std::int64_t b, std::int64_t head, const std::vector<std::int64_t>& rows) {
      const harness::HeadSlice slice = harness::head_slice(problem, tensor, b, head);
      const std::vector<double>& all = tensors.at(tensor);
      return harness::read_rows(slice, &rows, tensor, [&](std::int64_t row, std::int64_t c) {
        return all[static_cast<std::size_t>(slice.offset + row * slice.pitch + c)];
      });
    };
  }
};

inline HostOutputs host_outputs(const DeviceTensors& t, bool backward) {
  HostOutputs h{t.problem, t.dtype, {}};
  h.tensors["o"] = decode(t.o, t.dtype);
  h.tensors["lse"] = decode(t.lse, DType::fp32);
  if (backward) {
    h.tensors["dq"] = decode(t.dq, t.dtype);
    h.tensors["dk"] = decode(t.dk, t.dtype);
    h.tensors["dv"] = decode(t.dv, t.dtype);
  }
  return h;
}

// Every entry of every group of `out` (a run of variant `v` with `params` on inputs of `seed` and `distribution`)
// against the fp64 reference: the deterministic bound of v's data path and, unless v materializes, the
// FlashAttention rule with `baseline` (the standard variant's outputs on the same inputs) as the baseline; with no
// baseline given, the bound alone (as the harness judges a row whose baseline cannot run).
inline harness::Verification verify_outputs(const kernels::Variant& v, const AttentionParams& params, Pass pass,
                                            Distribution distribution, std::uint64_t seed, const HostOutputs& out,
                                            const HostOutputs* baseline) {
  harness::SuiteSettings every_entry;
  every_entry.verify = "all";
  harness::CheckSubject subject;
  subject.path = v.data_path(params.problem, params.dtype, params);
  subject.materializing = v.materializes;
  harness::FetchOutput baseline_fetch;
  if (!v.materializes && baseline != nullptr) {
    subject.baseline_path = variant("standard").data_path(params.problem, params.dtype, params);
    baseline_fetch = baseline->fetch();
    subject.baseline = &baseline_fetch;
  }
  const harness::Expectation expected(params.problem, params.dtype, pass, {seed, distribution, params.dtype},
                                      harness::choose_groups(params.problem, pass, every_entry), subject);
  return expected.check(out.fetch());
}

// A verification that must pass: every tensor within its deterministic bound (and the rule, with a baseline).
inline void check_verified(const harness::Verification& v) {
  INFO("verification: " << v.failure);
  CHECK(v.verified());
  CHECK(v.pass);
  for (const auto& [tensor, e] : v.tensors) {
    INFO(tensor << ": max abs error " << e.error.max_abs << " at " << e.worst_index << ", deterministic bound "
                << e.bound << ", probabilistic " << e.bound_prob << ", baseline "
                << (e.baseline ? e.baseline->max_abs : -1.0) << ", floor " << e.floor);
    CHECK(e.above_bound == 0);
    CHECK(e.pass);
  }
}

// The rows an output gives LSE = -inf (lse: [B', H, T] of shape `ls`), and how many entries of the given row tensors
// ([B', T, H, dim] each, with its dim) are not 0 in them: a fully masked row must be 0 in O (and dQ).
struct MaskedRows {
  std::int64_t rows = 0;
  std::int64_t nonzero = 0;
};
inline MaskedRows masked_rows(const std::vector<double>& lse, const Shape<3>& ls,
                              std::initializer_list<std::pair<const std::vector<double>*, std::int64_t>> row_tensors) {
  MaskedRows m;
  for (std::int64_t b = 0; b < ls[0]; ++b) {
    for (std::int64_t h = 0; h < ls[1]; ++h) {
      for (std::int64_t i = 0; i < ls[2]; ++i) {
        if (!std::isinf(lse[static_cast<std::size_t>((b * ls[1] + h) * ls[2] + i)])) continue;
        ++m.rows;
        for (const auto& [values, dim] : row_tensors) {
          for (std::int64_t c = 0; c < dim; ++c) {
            m.nonzero += (*values)[static_cast<std::size_t>(((b * ls[2] + i) * ls[1] + h) * dim + c)] != 0;
          }
        }
      }
    }
  }
  return m;
}

// One forward of the non-materializing variant `id` under `options` against the fp64 reference under the one
// verification rule (harness/verify.hpp): every entry within the deterministic bound of its data path, and (unless
// `with_baseline` is false: a sanitizer run of the variant's kernels alone) the FlashAttention rule with the standard
// variant on the same inputs as the baseline; every output written (outputs NaN-poisoned before the launch), no
// workspace, the inputs the generator's bit for bit, and fully masked rows O = 0, LSE = -inf exactly.
inline void check_forward(const std::string& id, const Case& c, DType dtype, const kernels::LaunchOptions& options,
                          std::uint64_t seed, Distribution distribution = Distribution::normal,
                          bool with_baseline = true) {
  INFO(id << ": " << c.name << " [" << c.problem.describe() << "] " << name(dtype) << " tile " << options.block_m << "x"
          << options.block_n << " " << name(distribution));
  const Problem& p = c.problem;
  const kernels::Variant& flash = variant(id);
  const kernels::Variant& baseline = variant("standard");
  REQUIRE(flash.supports(p, dtype, Pass::fwd).ok);
  REQUIRE(baseline.supports(p, dtype, Pass::fwd).ok);
  Stream stream;
  DeviceTensors t(p, dtype, seed, stream.get(), distribution);
  AttentionParams params = t.params();

  // the baseline: standard attention in the same dtype on the same inputs
  HostOutputs standard_out;
  if (with_baseline) {
    CountingAllocator baseline_allocator;
    baseline.forward(params, {baseline_allocator, stream.get()});
    stream.sync();
    CHECK(baseline_allocator.live_count() == 0);
    standard_out = host_outputs(t, false);
  }

  t.poison(stream.get());
  CountingAllocator allocator;
  params.options = options;
  flash.forward(params, {allocator, stream.get()});
  stream.sync();
  CHECK(allocator.calls() == 0);  // the forward allocates nothing (workspace model 0)
  CHECK(flash.workspace_model(p, dtype, Pass::fwd) == 0);
  const HostOutputs flash_out = host_outputs(t, false);
  const std::vector<double>& o = flash_out.tensors.at("o");
  const std::vector<double>& lse = flash_out.tensors.at("lse");

  // the device's inputs are the generator's, bit for bit
  reference::AttentionData<double> ref(p);
  ref.randomize({seed, distribution, dtype});
  CHECK(bit_mismatches(decode(t.q, dtype), ref.q.values()) == 0);
  CHECK(bit_mismatches(decode(t.k, dtype), ref.k.values()) == 0);
  CHECK(bit_mismatches(decode(t.v, dtype), ref.v.values()) == 0);

  // every output element written, none NaN
  CHECK(count_nan(o) == 0);
  CHECK(count_nan(lse) == 0);

  check_verified(verify_outputs(flash, params, Pass::fwd, distribution, seed, flash_out,
                                with_baseline ? &standard_out : nullptr));

  // fully masked rows: LSE = -inf and O = 0 exactly
  const MaskedRows masked = masked_rows(lse, t.shapes.lse, {{&o, p.dv()}});
  CHECK(masked.rows == fully_masked_rows(p));
  CHECK(masked.nonzero == 0);
}

// The input distributions the numerics tests run (core/generator.hpp): the FlashAttention-3 outlier inputs and the
// structured ones that stress the softmax.
inline constexpr Distribution kStressDistributions[] = {Distribution::outliers, Distribution::peaked, Distribution::flat,
                                                       Distribution::ramp, Distribution::ties, Distribution::large_logits};

}  // namespace flashlab::gpu_test
