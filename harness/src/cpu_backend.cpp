// The CPU backend: host buffers, a host clock around synchronous work.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "flashlab/core/errors.hpp"
#include "flashlab/core/parallel.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/hash.hpp"
#include "flashlab/harness/io_tensors.hpp"
#include "flashlab/harness/registry.hpp"

namespace flashlab::harness {
namespace {

// Fills a host buffer of `dtype` with the generator's values (the same bits a GPU backend generates).
void generate_host(void* data, DType dtype, std::int64_t count, std::uint64_t seed, TensorId tensor,
                   Distribution distribution, InputLayout layout) {
  constexpr std::int64_t kChunk = 1 << 15;
  parallel_for((count + kChunk - 1) / kChunk, default_worker_count(), [&](std::int64_t chunk, int) {
    const std::int64_t end = std::min(count, (chunk + 1) * kChunk);
    for (std::int64_t i = chunk * kChunk; i < end; ++i) {
      store(data, i, dtype,
            input_value(seed, static_cast<std::uint32_t>(tensor), static_cast<std::uint64_t>(i), distribution, dtype,
                        layout));
    }
  });
}

class CpuBackend final : public Backend {
 public:
  kernels::Device device() const override { return kernels::Device::cpu; }
  TrackingAllocator& workspace() override { return workspace_; }

  void prepare(const RowSpec& row, std::uint64_t seed) override {
    release();
    row_ = row;
    tensors_ = io_tensors(row.problem, row.dtype);
    std::vector<void*> data;
    for (const IoTensor& t : tensors_) {
      buffers_.emplace_back(io_, static_cast<std::size_t>(t.bytes()), "row tensor " + t.name);
      data.push_back(buffers_.back().as<void>());
    }
    const std::pair<const char*, TensorId> inputs[] = {
        {"q", TensorId::q}, {"k", TensorId::k}, {"v", TensorId::v}, {"d_out", TensorId::d_out}};
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const IoTensor& t = tensors_[i];
      const std::int64_t n = element_count<4>(t.shape);
      bool is_input = false;
      for (const auto& [name, id] : inputs) {
        if (t.name == name) {
          // an unpadded row draws each token as its token of the padded tensors
          const InputLayout layout{t.shape[2], t.shape[3],
                                   row.token_source.empty() ? nullptr : row.token_source.data()};
          generate_host(data[i], row.dtype, n, seed, id, row.distribution, layout);
          is_input = true;
        }
      }
      if (is_input) continue;
      if (t.name == "lse") {
        std::fill_n(static_cast<float*>(data[i]), n, std::numeric_limits<float>::quiet_NaN());
      } else if (is_length_tensor(t)) {
        const std::vector<std::int32_t> lengths = length_values(row.problem, t);
        std::copy(lengths.begin(), lengths.end(), static_cast<std::int32_t*>(data[i]));
      } else {
        for (std::int64_t e = 0; e < n; ++e) store(data[i], e, row.dtype, std::numeric_limits<double>::quiet_NaN());
      }
    }
    params_ = make_params(row.problem, row.dtype, data);
    apply_options(resolve_variant(row.variant), params_);
  }

  const kernels::AttentionParams& params() const override { return params_; }
  kernels::LaunchContext context() override { return {workspace_, nullptr}; }
  std::int64_t io_bytes() const override { return io_.live_bytes(); }
  void synchronize() override {}

  std::vector<double> time(const std::function<void()>& region, int warmup, int repetitions) override {
    for (int i = 0; i < warmup; ++i) region();
    std::vector<double> ms;
    for (int i = 0; i < repetitions; ++i) {
      const auto start = std::chrono::steady_clock::now();
      region();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    return ms;
  }

  std::vector<double> fetch(const std::string& tensor, std::int64_t b, std::int64_t head,
                            const std::vector<std::int64_t>* rows) override {
    const HeadSlice slice = head_slice(row_.problem, tensor, b, head);
    const void* base = buffer(tensor);
    const bool is_lse = tensor == "lse";
    return read_rows(slice, rows, tensor, [&](std::int64_t row, std::int64_t c) {
      const std::int64_t at = slice.offset + row * slice.pitch + c;
      return is_lse ? static_cast<double>(static_cast<const float*>(base)[at]) : load(base, at, row_.dtype);
    });
  }

  std::string output_hash(const std::string& tensor) override {
    if (row_.pass == Pass::fwd && tensor != "o" && tensor != "lse") return {};
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].name == tensor) return fnv1a_hex(buffers_[i].as<void>(), static_cast<std::size_t>(tensors_[i].bytes()));
    }
    return {};
  }

  std::optional<Traffic> traffic(const std::function<void()>&, std::string& why) override {
    why = "CPU variant: no HBM counters";
    return std::nullopt;
  }
  std::optional<std::int64_t> memgetinfo_delta() override { return std::nullopt; }

  void save_tensors(const std::string& dir, Pass pass) override {
    std::filesystem::create_directories(dir);
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (saved_tensor(tensors_[i], pass)) write_tensor_npy(dir, tensors_[i], buffers_[i].as<void>(), row_.dtype);
    }
  }

  void release() override { buffers_.clear(); }

 private:
  const void* buffer(const std::string& name) const {
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].name == name) return buffers_[i].as<void>();
    }
    return nullptr;
  }

  HostAllocator io_, workspace_;
  std::vector<Workspace> buffers_;
  std::vector<IoTensor> tensors_;
  kernels::AttentionParams params_;
  RowSpec row_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

#if !defined(FLASHLAB_WITH_CUDA)
std::unique_ptr<Backend> make_gpu_backend() {
  throw Unsupported("this build has no CUDA (configure with the cuda preset)");
}
#endif

}  // namespace flashlab::harness
