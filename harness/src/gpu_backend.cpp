// The GPU backend: device buffers from tracking allocators, CUDA events on one stream, an L2 flush before every
// timed repetition, CUPTI for HBM traffic, NVML (when present) for the clocks in run.json.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "flashlab/core/errors.hpp"
#include "flashlab/core/storage.hpp"
#include "flashlab/harness/backend.hpp"
#include "flashlab/harness/hash.hpp"
#include "flashlab/harness/io_tensors.hpp"
#include "flashlab/harness/registry.hpp"
#include "flashlab/harness/run_info.hpp"
#include "flashlab/harness/traffic.hpp"
#include "flashlab/kernels/device.hpp"

namespace flashlab::harness {
namespace {

void check(cudaError_t status, const char* call, int line) {
  if (status != cudaSuccess) {
    throw CudaError(fmt::format("{} failed: {} ({}:{})", call, cudaGetErrorString(status), __FILE__, line));
  }
}
#define FL_CUDA(call) check((call), #call, __LINE__)

// Current SM and memory clocks through NVML, loaded at run time (the driver ships it); empty when absent.
nlohmann::json current_clocks() {
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!nvml) return nullptr;
  using Init = int (*)();
  using Handle = int (*)(unsigned, void**);
  using Clock = int (*)(void*, int, unsigned*);
  const auto init = reinterpret_cast<Init>(dlsym(nvml, "nvmlInit_v2"));
  const auto shutdown = reinterpret_cast<Init>(dlsym(nvml, "nvmlShutdown"));
  const auto handle_of = reinterpret_cast<Handle>(dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2"));
  const auto clock_of = reinterpret_cast<Clock>(dlsym(nvml, "nvmlDeviceGetClockInfo"));
  nlohmann::json clocks = nullptr;
  if (init && shutdown && handle_of && clock_of && init() == 0) {
    void* device = nullptr;
    unsigned sm = 0, memory = 0;
    constexpr int kClockSm = 1, kClockMemory = 2;  // nvmlClockType_t
    if (handle_of(0, &device) == 0 && clock_of(device, kClockSm, &sm) == 0 && clock_of(device, kClockMemory, &memory) == 0) {
      clocks = {{"sm_mhz", sm}, {"memory_mhz", memory}};
    }
    shutdown();
  }
  dlclose(nvml);
  return clocks;
}

class GpuBackend final : public Backend {
 public:
  GpuBackend() {
    if (kernels::device_count() == 0) throw Unsupported("no CUDA device found");
    FL_CUDA(cudaSetDevice(0));
    kernels::require_compute_capability(8, 0);
    FL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    flusher_ = std::make_unique<kernels::L2Flusher>();
  }
  ~GpuBackend() override {
    release();
    flusher_.reset();
    cudaStreamDestroy(stream_);
  }

  kernels::Device device() const override { return kernels::Device::cuda; }
  TrackingAllocator& workspace() override { return workspace_; }

  void prepare(const RowSpec& row, std::uint64_t seed) override {
    release();
    row_ = row;
    free_at_start_ = device_free_bytes();
    tensors_ = io_tensors(row.problem, row.dtype);
    std::vector<void*> data;
    for (const IoTensor& t : tensors_) {
      buffers_.emplace_back(io_, static_cast<std::size_t>(t.bytes()), "row tensor " + t.name);
      data.push_back(buffers_.back().as<void>());
    }
    // an unpadded row's token remap, on the device while its inputs are generated (then freed: not a row tensor)
    Workspace remap;
    if (!row.token_source.empty()) {
      const std::size_t bytes = row.token_source.size() * sizeof(std::int64_t);
      remap = Workspace(io_, bytes, "token remap of the unpadded inputs");
      FL_CUDA(cudaMemcpyAsync(remap.as<void>(), row.token_source.data(), bytes, cudaMemcpyHostToDevice, stream_));
    }
    const std::int64_t* token_source = remap.as<const std::int64_t>();
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const IoTensor& t = tensors_[i];
      const std::int64_t n = element_count<4>(t.shape);
      // [slots, tokens, heads, dim]; an unpadded row draws each token as its token of the padded tensors
      const InputLayout layout{t.shape[2], t.shape[3], token_source};
      const auto generate = [&](TensorId id) {
        kernels::generate(data[i], row.dtype, n, seed, id, row.distribution, layout, stream_);
      };
      if (t.name == "q") generate(TensorId::q);
      else if (t.name == "k") generate(TensorId::k);
      else if (t.name == "v") generate(TensorId::v);
      else if (t.name == "d_out") generate(TensorId::d_out);
      else if (t.name == "lse") kernels::fill_nan(data[i], DType::fp32, n, stream_);
      else if (is_length_tensor(t)) {
        offsets_.push_back(length_values(row.problem, t));
        FL_CUDA(cudaMemcpyAsync(data[i], offsets_.back().data(), offsets_.back().size() * sizeof(std::int32_t),
                                cudaMemcpyHostToDevice, stream_));
      } else {
        kernels::fill_nan(data[i], row.dtype, n, stream_);
      }
    }
    FL_CUDA(cudaStreamSynchronize(stream_));
    if (!row.token_source.empty()) {
      remap = Workspace();
      io_.trim();
    }
    params_ = make_params(row.problem, row.dtype, data);
    apply_options(resolve_variant(row.variant), params_);
  }

  const kernels::AttentionParams& params() const override { return params_; }
  kernels::LaunchContext context() override { return {workspace_, stream_}; }
  std::int64_t io_bytes() const override { return io_.live_bytes(); }
  void synchronize() override {
    FL_CUDA(cudaStreamSynchronize(stream_));
    FL_CUDA(cudaGetLastError());
  }

  std::vector<double> time(const std::function<void()>& region, int warmup, int repetitions) override {
    for (int i = 0; i < warmup; ++i) region();
    std::vector<cudaEvent_t> start(static_cast<std::size_t>(repetitions)), stop(start.size());
    for (std::size_t i = 0; i < start.size(); ++i) {
      FL_CUDA(cudaEventCreate(&start[i]));
      FL_CUDA(cudaEventCreate(&stop[i]));
    }
    for (std::size_t i = 0; i < start.size(); ++i) {
      flusher_->flush(stream_);  // cold L2, outside the timed interval
      FL_CUDA(cudaEventRecord(start[i], stream_));
      region();
      FL_CUDA(cudaEventRecord(stop[i], stream_));
    }
    synchronize();
    std::vector<double> ms;
    for (std::size_t i = 0; i < start.size(); ++i) {
      float elapsed = 0;
      FL_CUDA(cudaEventElapsedTime(&elapsed, start[i], stop[i]));
      ms.push_back(elapsed);
      cudaEventDestroy(start[i]);
      cudaEventDestroy(stop[i]);
    }
    return ms;
  }

  std::vector<double> fetch(const std::string& tensor, std::int64_t b, std::int64_t head,
                            const std::vector<std::int64_t>* rows) override {
    const HeadSlice slice = head_slice(row_.problem, tensor, b, head);
    const bool is_lse = tensor == "lse";
    const std::size_t es = is_lse ? 4 : static_cast<std::size_t>(size_bytes(row_.dtype));
    std::vector<unsigned char> host(static_cast<std::size_t>(slice.rows * slice.dim) * es);
    if (slice.rows > 0) {
      const auto* base = static_cast<const unsigned char*>(buffer(tensor)) + static_cast<std::size_t>(slice.offset) * es;
      FL_CUDA(cudaMemcpy2D(host.data(), static_cast<std::size_t>(slice.dim) * es, base,
                           static_cast<std::size_t>(slice.pitch) * es, static_cast<std::size_t>(slice.dim) * es,
                           static_cast<std::size_t>(slice.rows), cudaMemcpyDeviceToHost));
    }
    return read_rows(slice, rows, tensor, [&](std::int64_t row, std::int64_t c) {
      return load(host.data(), row * slice.dim + c, is_lse ? DType::fp32 : row_.dtype);
    });
  }

  std::string output_hash(const std::string& tensor) override {
    if (row_.pass == Pass::fwd && tensor != "o" && tensor != "lse") return {};
    synchronize();  // the stream is non-blocking: cudaMemcpy would not wait for it
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].name != tensor) continue;
      std::vector<unsigned char> host(static_cast<std::size_t>(tensors_[i].bytes()));
      FL_CUDA(cudaMemcpy(host.data(), buffers_[i].as<void>(), host.size(), cudaMemcpyDeviceToHost));
      return fnv1a_hex(host.data(), host.size());
    }
    return {};
  }

  std::optional<Traffic> traffic(const std::function<void()>& region, std::string& why) override {
    try {
      TrafficProfiler profiler(0);
      const TrafficCounts counts = profiler.measure(region);
      return Traffic{counts.dram_read_bytes, counts.dram_write_bytes, counts.l2_read_bytes, counts.l2_write_bytes};
    } catch (const Unsupported& e) {
      why = e.what();
      return std::nullopt;
    }
  }

  std::optional<std::int64_t> memgetinfo_delta() override { return free_at_start_ - device_free_bytes(); }

  void save_tensors(const std::string& dir, Pass pass) override {
    std::filesystem::create_directories(dir);
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (!saved_tensor(tensors_[i], pass)) continue;
      std::vector<unsigned char> host(static_cast<std::size_t>(tensors_[i].bytes()));
      FL_CUDA(cudaMemcpy(host.data(), buffers_[i].as<void>(), host.size(), cudaMemcpyDeviceToHost));
      write_tensor_npy(dir, tensors_[i], host.data(), row_.dtype);
    }
  }

  void release() override {
    cudaStreamSynchronize(stream_);
    buffers_.clear();
    offsets_.clear();
    io_.trim();
    workspace_.trim();
  }

 private:
  const void* buffer(const std::string& name) const {
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].name == name) return buffers_[i].as<void>();
    }
    throw std::logic_error("no row tensor " + name);
  }

  DeviceAllocator io_, workspace_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<kernels::L2Flusher> flusher_;
  std::vector<IoTensor> tensors_;
  std::vector<Workspace> buffers_;
  std::vector<std::vector<std::int32_t>> offsets_;
  kernels::AttentionParams params_;
  RowSpec row_;
  std::int64_t free_at_start_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_gpu_backend() { return std::make_unique<GpuBackend>(); }

std::string device_block_json() {
  if (kernels::device_count() == 0) return "null";
  const kernels::DeviceInfo d = kernels::device_info(0);
  nlohmann::json j = {{"name", d.name},
                      {"uuid", d.uuid},
                      {"sm_count", d.sm_count},
                      {"l2_bytes", d.l2_bytes},
                      {"memory_bytes", d.memory_bytes},
                      {"compute_capability", fmt::format("{}.{}", d.compute_capability_major, d.compute_capability_minor)},
                      {"driver_version", kernels::cuda_version_string(d.driver_version)},
                      {"runtime_version", kernels::cuda_version_string(d.runtime_version)},
                      {"cublas_version", kernels::cublas_version()},
                      {"peak_clock_khz", {{"sm", d.clock_khz_sm}, {"memory", d.clock_khz_memory}}},
                      {"clocks", current_clocks()}};
  return j.dump();
}

}  // namespace flashlab::harness
