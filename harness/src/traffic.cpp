// HBM/L2 traffic of a region through the CUPTI Range Profiler (cupti_range_profiler.h, CUDA 12.6+).
//
// Call sequence (what harness/TRAFFIC.md describes):
//   constructor  cuptiProfilerInitialize -> cuptiProfilerDeviceSupported -> cuptiDeviceGetChipName ->
//                cuptiProfilerGetCounterAvailability -> cuptiProfilerHostInitialize ->
//                cuptiProfilerHostConfigAddMetrics -> cuptiProfilerHostGetConfigImage(Size) -> one probe
//                measure()
//   measure()    cuptiRangeProfilerEnable -> cuptiRangeProfilerGetCounterDataSize ->
//                cuptiRangeProfilerCounterDataImageInitialize -> cuptiRangeProfilerSetConfig (user range, user
//                replay) -> per pass { Start; flush L2; PushRange "region"; region; sync; PopRange;
//                PushRange "drain"; drain L2; sync; PopRange; Stop } until Stop reports every pass submitted ->
//                cuptiRangeProfilerDecodeData -> cuptiProfilerHostEvaluateToGpuValues per range ->
//                cuptiRangeProfilerDisable
//   destructor   cuptiProfilerHostDeinitialize -> cuptiProfilerDeInitialize
//
// User range + user replay is the mode that counts a region of several kernels (cuBLAS ones included) as one
// range; kernel replay exists only with auto range, one range per kernel, each kernel replayed by CUPTI with
// its memory saved and restored. With user replay the profiler re-runs the caller's region for each pass.
#include "flashlab/harness/traffic.hpp"

#include <cuda.h>
#include <cuda_runtime.h>
#include <cupti.h>
#include <cupti_profiler_host.h>
#include <cupti_profiler_target.h>
#include <cupti_range_profiler.h>
#include <cupti_target.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashlab/core/errors.hpp"

namespace flashlab::harness {
namespace {

// Reads `count` 16-byte words through L2 (ld.global.cg: cached in L2, not in L1) and never writes: the xor of a
// zero buffer is zero, but the compiler cannot know it, so the loads stay. Reading a buffer twice the size of L2
// evicts every line L2 held (dirty ones are written back) and leaves L2 full of clean lines, which later misses
// evict without any write-back. PTX 7.0 for sm_70, JIT-compiled by the driver for the device at hand, so the
// harness library needs no device compiler.
constexpr const char* kReadThroughL2Ptx = R"(
.version 7.0
.target sm_70
.address_size 64

.visible .entry flashlab_read_through_l2(
    .param .u64 data,
    .param .u64 count
)
{
    .reg .pred  p;
    .reg .b32   r<10>;
    .reg .b64   rd<9>;

    ld.param.u64        rd1, [data];
    ld.param.u64        rd2, [count];
    cvta.to.global.u64  rd1, rd1;
    mov.u32             r1, %ctaid.x;
    mov.u32             r2, %ntid.x;
    mov.u32             r3, %tid.x;
    mov.u32             r4, %nctaid.x;
    mul.wide.u32        rd3, r1, r2;
    cvt.u64.u32         rd4, r3;
    add.u64             rd3, rd3, rd4;
    mul.wide.u32        rd5, r4, r2;
    mov.u32             r5, 0;
LOOP:
    setp.ge.u64         p, rd3, rd2;
    @p bra              DONE;
    shl.b64             rd6, rd3, 4;
    add.u64             rd7, rd1, rd6;
    ld.global.cg.v4.u32 {r6, r7, r8, r9}, [rd7];
    xor.b32             r5, r5, r6;
    xor.b32             r5, r5, r7;
    xor.b32             r5, r5, r8;
    xor.b32             r5, r5, r9;
    add.u64             rd3, rd3, rd5;
    bra                 LOOP;
DONE:
    setp.eq.u32         p, r5, 0;
    @p ret;
    st.global.u32       [rd1], r5;
    ret;
}
)";
constexpr const char* kReadThroughL2Name = "flashlab_read_through_l2";
constexpr unsigned kFlushThreads = 256;
constexpr unsigned kFlushBlocksPerSm = 8;
constexpr std::size_t kFlushWordBytes = 16;   // one ld.global.cg.v4.u32
constexpr std::size_t kFlushL2Multiple = 2;   // flush buffer = 2 x L2
constexpr std::size_t kProbeBytes = 1 << 20;  // the constructor's probe region reads 1 MiB
constexpr int kMaxPasses = 64;                // four counters need one pass; this only stops a runaway loop
constexpr double kSectorBytes = 32;           // an L2 sector

// Range names: counter data is kept per range name, identical in every pass.
constexpr const char* kRegionRange = "region";
constexpr const char* kDrainRange = "drain";

// The metrics, in the order of TrafficCounts' fields.
constexpr const char* kDramRead = "dram__bytes_read.sum";
constexpr const char* kDramWrite = "dram__bytes_write.sum";
constexpr const char* kL2ReadBytes = "lts__t_bytes_srcunit_tex_op_read.sum";
constexpr const char* kL2WriteBytes = "lts__t_bytes_srcunit_tex_op_write.sum";
constexpr const char* kL2ReadSectors = "lts__t_sectors_srcunit_tex_op_read.sum";
constexpr const char* kL2WriteSectors = "lts__t_sectors_srcunit_tex_op_write.sum";

std::string where(const char* call) {
  return std::string("TrafficProfiler: ") + call;
}

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw CudaError(where(call) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
  }
}
#define FLASHLAB_TRAFFIC_CUDA(call) check_cuda((call), #call)

std::string cupti_message(CUptiResult status) {
  const char* text = nullptr;
  if (cuptiGetResultString(status, &text) != CUPTI_SUCCESS || text == nullptr) {
    return "CUPTI error " + std::to_string(static_cast<int>(status));
  }
  std::string message = text;
  if (status == CUPTI_ERROR_INSUFFICIENT_PRIVILEGES ||
      status == CUPTI_ERROR_VIRTUALIZED_DEVICE_INSUFFICIENT_PRIVILEGES) {
    message +=
        "; reading GPU performance counters needs permission (ERR_NVGPUCTRPERM): run as root or load the "
        "driver with NVreg_RestrictProfilingToAdminUsers=0";
  }
  return message;
}

// A CUPTI parameter struct: zeroed, with its size set (CUPTI reads the size to know the struct's version).
template <typename Params>
Params cupti_params(std::size_t struct_size) {
  Params params{};
  params.structSize = struct_size;
  return params;
}

// Results that say profiling is not available here, as opposed to a failed call.
bool means_unavailable(CUptiResult status) {
  switch (status) {
    case CUPTI_ERROR_INSUFFICIENT_PRIVILEGES:
    case CUPTI_ERROR_VIRTUALIZED_DEVICE_INSUFFICIENT_PRIVILEGES:
    case CUPTI_ERROR_NOT_SUPPORTED:
    case CUPTI_ERROR_NOT_COMPATIBLE:
    case CUPTI_ERROR_HARDWARE_BUSY:
    case CUPTI_ERROR_VIRTUALIZED_DEVICE_NOT_SUPPORTED:
    case CUPTI_ERROR_LEGACY_PROFILER_NOT_SUPPORTED:
    case CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED:
    case CUPTI_ERROR_OLD_PROFILER_API_INITIALIZED:
    case CUPTI_ERROR_CONFIDENTIAL_COMPUTING_NOT_SUPPORTED:
    case CUPTI_ERROR_CMP_DEVICE_NOT_SUPPORTED:
    case CUPTI_ERROR_MIG_DEVICE_NOT_SUPPORTED:
    case CUPTI_ERROR_SLI_DEVICE_NOT_SUPPORTED:
    case CUPTI_ERROR_WSL_DEVICE_NOT_SUPPORTED:
    case CUPTI_ERROR_INVALID_CHIP_NAME:
    case CUPTI_ERROR_INVALID_METRIC_NAME:
    case CUPTI_ERROR_NOT_INITIALIZED: return true;
    default: return false;
  }
}

// A CUPTI failure: Unsupported when it says profiling is unavailable (or while setting up, `setup`, where any
// failure means the same), CudaError otherwise.
void check_cupti(CUptiResult status, const char* call, bool setup) {
  if (status == CUPTI_SUCCESS) return;
  const std::string message = "CUPTI profiling unavailable: " + std::string(call) + ": " + cupti_message(status);
  if (setup || means_unavailable(status)) throw Unsupported(message);
  throw CudaError(where(call) + ": " + cupti_message(status));
}
#define FLASHLAB_TRAFFIC_CUPTI_SETUP(call) check_cupti((call), #call, true)

// Makes `device` current for a scope and restores the caller's device after it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    FLASHLAB_TRAFFIC_CUDA(cudaGetDevice(&previous_));
    FLASHLAB_TRAFFIC_CUDA(cudaSetDevice(device));
  }
  ~DeviceScope() { static_cast<void>(cudaSetDevice(previous_)); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

// Driver entry points, found through the runtime so that no link against libcuda is needed.
template <typename Function>
Function driver_function(const char* symbol) {
  void* function = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  FLASHLAB_TRAFFIC_CUDA(cudaGetDriverEntryPointByVersion(symbol, &function, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || function == nullptr) {
    throw CudaError(where("driver entry point ") + symbol + " not found");
  }
  return reinterpret_cast<Function>(function);
}

void check_driver(CUresult status, const char* call) {
  if (status != CUDA_SUCCESS) throw CudaError(where(call) + ": CUresult " + std::to_string(static_cast<int>(status)));
}

}  // namespace

struct TrafficProfiler::Impl {
  int device = 0;
  CUcontext context = nullptr;
  std::string chip;
  std::vector<std::string> metrics;  // dram read, dram write, L2 read, L2 write
  double l2_scale = 1;               // bytes per unit of the L2 metrics (1 for bytes, 32 for sectors)
  std::vector<std::uint8_t> counter_availability;
  std::vector<std::uint8_t> config_image;
  CUpti_Profiler_Host_Object* host = nullptr;
  bool profiler_initialized = false;

  cudaLibrary_t library = nullptr;
  cudaKernel_t read_kernel = nullptr;
  void* flush_buffer = nullptr;
  std::size_t flush_bytes = 0;
  unsigned flush_blocks = 0;

  ~Impl() {
    if (host != nullptr) {
      auto params =
          cupti_params<CUpti_Profiler_Host_Deinitialize_Params>(CUpti_Profiler_Host_Deinitialize_Params_STRUCT_SIZE);
      params.pHostObject = host;
      static_cast<void>(cuptiProfilerHostDeinitialize(&params));
    }
    if (profiler_initialized) {
      auto params = cupti_params<CUpti_Profiler_DeInitialize_Params>(CUpti_Profiler_DeInitialize_Params_STRUCT_SIZE);
      static_cast<void>(cuptiProfilerDeInitialize(&params));
    }
    if (flush_buffer != nullptr || library != nullptr) {
      int previous = 0;
      if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(device) == cudaSuccess) {
        if (flush_buffer != nullptr) static_cast<void>(cudaFree(flush_buffer));
        if (library != nullptr) static_cast<void>(cudaLibraryUnload(library));
        static_cast<void>(cudaSetDevice(previous));
      }
    }
  }

  // Reads `bytes` of the flush buffer through L2 and waits for it.
  void read_through_l2(std::size_t bytes) const {
    void* data = flush_buffer;
    auto count = static_cast<unsigned long long>(bytes / kFlushWordBytes);
    std::array<void*, 2> args{&data, &count};
    FLASHLAB_TRAFFIC_CUDA(cudaLaunchKernel(reinterpret_cast<const void*>(read_kernel), dim3(flush_blocks),
                                           dim3(kFlushThreads), args.data(), 0, nullptr));
    FLASHLAB_TRAFFIC_CUDA(cudaDeviceSynchronize());
  }

  void set_up_flush() {
    int l2_bytes = 0;
    int sms = 0;
    FLASHLAB_TRAFFIC_CUDA(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
    FLASHLAB_TRAFFIC_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const std::size_t words =
        (kFlushL2Multiple * static_cast<std::size_t>(l2_bytes) + kFlushWordBytes - 1) / kFlushWordBytes;
    flush_bytes = std::max(words * kFlushWordBytes, kProbeBytes);
    flush_blocks = static_cast<unsigned>(sms) * kFlushBlocksPerSm;
    FLASHLAB_TRAFFIC_CUDA(cudaMalloc(&flush_buffer, flush_bytes));
    FLASHLAB_TRAFFIC_CUDA(cudaMemset(flush_buffer, 0, flush_bytes));
    FLASHLAB_TRAFFIC_CUDA(cudaLibraryLoadData(&library, kReadThroughL2Ptx, nullptr, nullptr, 0, nullptr, nullptr, 0));
    FLASHLAB_TRAFFIC_CUDA(cudaLibraryGetKernel(&read_kernel, library, kReadThroughL2Name));
    FLASHLAB_TRAFFIC_CUDA(cudaDeviceSynchronize());
  }

  void set_up_cupti() {
    auto initialize = cupti_params<CUpti_Profiler_Initialize_Params>(CUpti_Profiler_Initialize_Params_STRUCT_SIZE);
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerInitialize(&initialize));
    profiler_initialized = true;

    CUdevice cu_device = 0;
    check_driver(driver_function<CUresult(CUDAAPI*)(CUdevice*)>("cuCtxGetDevice")(&cu_device), "cuCtxGetDevice");
    auto supported =
        cupti_params<CUpti_Profiler_DeviceSupported_Params>(CUpti_Profiler_DeviceSupported_Params_STRUCT_SIZE);
    supported.cuDevice = cu_device;
    supported.api = CUPTI_PROFILER_RANGE_PROFILING;
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerDeviceSupported(&supported));
    if (supported.isSupported != CUPTI_PROFILER_CONFIGURATION_SUPPORTED) {
      std::string reasons;
      const std::pair<CUpti_Profiler_Support_Level, const char*> checks[] = {
          {supported.architecture, "architecture (compute capability 7.0 or newer needed)"},
          {supported.sli, "SLI"},
          {supported.vGpu, "vGPU (profiling not enabled for this virtual GPU)"},
          {supported.confidentialCompute, "confidential computing"},
          {supported.cmp, "crypto-mining processor"},
          {supported.wsl, "WSL"}};
      for (const auto& [level, what] : checks) {
        if (level != CUPTI_PROFILER_CONFIGURATION_SUPPORTED)
          reasons += (reasons.empty() ? "" : ", ") + std::string(what);
      }
      throw Unsupported("CUPTI range profiling unsupported on device " + std::to_string(device) + ": " +
                        (reasons.empty() ? "no reason given" : reasons));
    }

    auto chip_name = cupti_params<CUpti_Device_GetChipName_Params>(CUpti_Device_GetChipName_Params_STRUCT_SIZE);
    chip_name.deviceIndex = static_cast<std::size_t>(cu_device);
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiDeviceGetChipName(&chip_name));
    chip = chip_name.pChipName;

    // Before cuptiRangeProfilerEnable: the availability query may fail while a session is active.
    auto availability = cupti_params<CUpti_Profiler_GetCounterAvailability_Params>(
        CUpti_Profiler_GetCounterAvailability_Params_STRUCT_SIZE);
    availability.ctx = context;
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerGetCounterAvailability(&availability));
    counter_availability.resize(availability.counterAvailabilityImageSize);
    availability.pCounterAvailabilityImage = counter_availability.data();
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerGetCounterAvailability(&availability));

    auto host_init =
        cupti_params<CUpti_Profiler_Host_Initialize_Params>(CUpti_Profiler_Host_Initialize_Params_STRUCT_SIZE);
    host_init.profilerType = CUPTI_PROFILER_TYPE_RANGE_PROFILER;
    host_init.pChipName = chip.c_str();
    host_init.pCounterAvailabilityImage = counter_availability.data();
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerHostInitialize(&host_init));
    host = host_init.pHostObject;

    // L2 request bytes: the bytes metric where the chip's metric tables have it, else sectors x 32 (the same
    // number: a sector is 32 bytes).
    auto properties = cupti_params<CUpti_Profiler_Host_GetMetricProperties_Params>(
        CUpti_Profiler_Host_GetMetricProperties_Params_STRUCT_SIZE);
    properties.pHostObject = host;
    const auto known = [&properties](const char* name) {
      properties.pMetricName = name;
      return cuptiProfilerHostGetMetricProperties(&properties) == CUPTI_SUCCESS;
    };
    const bool l2_bytes_metric = known(kL2ReadBytes) && known(kL2WriteBytes);
    metrics = {kDramRead, kDramWrite, l2_bytes_metric ? kL2ReadBytes : kL2ReadSectors,
               l2_bytes_metric ? kL2WriteBytes : kL2WriteSectors};
    l2_scale = l2_bytes_metric ? 1 : kSectorBytes;
    for (const std::string& name : metrics) {
      if (!known(name.c_str())) {
        throw Unsupported("CUPTI profiling unavailable: chip " + chip + " has no metric " + name);
      }
    }

    const std::vector<const char*> names = metric_names();
    auto add = cupti_params<CUpti_Profiler_Host_ConfigAddMetrics_Params>(
        CUpti_Profiler_Host_ConfigAddMetrics_Params_STRUCT_SIZE);
    add.pHostObject = host;
    add.ppMetricNames = const_cast<const char**>(names.data());
    add.numMetrics = names.size();
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerHostConfigAddMetrics(&add));

    auto image_size = cupti_params<CUpti_Profiler_Host_GetConfigImageSize_Params>(
        CUpti_Profiler_Host_GetConfigImageSize_Params_STRUCT_SIZE);
    image_size.pHostObject = host;
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerHostGetConfigImageSize(&image_size));
    config_image.resize(image_size.configImageSize);
    auto image =
        cupti_params<CUpti_Profiler_Host_GetConfigImage_Params>(CUpti_Profiler_Host_GetConfigImage_Params_STRUCT_SIZE);
    image.pHostObject = host;
    image.configImageSize = config_image.size();
    image.pConfigImage = config_image.data();
    FLASHLAB_TRAFFIC_CUPTI_SETUP(cuptiProfilerHostGetConfigImage(&image));
  }

  // One measurement (measure()); `setup`: any CUPTI failure means profiling is unavailable.
  [[nodiscard]] TrafficCounts run(const std::function<void()>& region, bool setup);

  [[nodiscard]] std::vector<const char*> metric_names() const {
    std::vector<const char*> names;
    for (const std::string& name : metrics) names.push_back(name.c_str());
    return names;
  }
};

namespace {

// One profiling session on a context: cuptiRangeProfilerEnable ... cuptiRangeProfilerDisable. The destructor
// unwinds whatever is open (a range, a started pass) when the region throws.
class Session {
 public:
  // `setup`: every CUPTI failure means profiling is unavailable (the constructor's probe pass).
  Session(CUcontext context, const std::vector<const char*>& metrics, const std::vector<std::uint8_t>& config,
          bool setup)
      : setup_(setup) {
    auto enable = cupti_params<CUpti_RangeProfiler_Enable_Params>(CUpti_RangeProfiler_Enable_Params_STRUCT_SIZE);
    enable.ctx = context;
    check(cuptiRangeProfilerEnable(&enable), "cuptiRangeProfilerEnable");
    object_ = enable.pRangeProfilerObject;

    // Two ranges per pass: the region and the drain after it.
    constexpr std::size_t kRanges = 2;
    auto size = cupti_params<CUpti_RangeProfiler_GetCounterDataSize_Params>(
        CUpti_RangeProfiler_GetCounterDataSize_Params_STRUCT_SIZE);
    size.pRangeProfilerObject = object_;
    size.pMetricNames = const_cast<const char**>(metrics.data());
    size.numMetrics = metrics.size();
    size.maxNumOfRanges = kRanges;
    size.maxNumRangeTreeNodes = kRanges;
    check(cuptiRangeProfilerGetCounterDataSize(&size), "cuptiRangeProfilerGetCounterDataSize");
    counter_data_.assign(size.counterDataSize, 0);

    auto init = cupti_params<CUpti_RangeProfiler_CounterDataImage_Initialize_Params>(
        CUpti_RangeProfiler_CounterDataImage_Initialize_Params_STRUCT_SIZE);
    init.pRangeProfilerObject = object_;
    init.counterDataSize = counter_data_.size();
    init.pCounterData = counter_data_.data();
    check(cuptiRangeProfilerCounterDataImageInitialize(&init), "cuptiRangeProfilerCounterDataImageInitialize");

    auto set = cupti_params<CUpti_RangeProfiler_SetConfig_Params>(CUpti_RangeProfiler_SetConfig_Params_STRUCT_SIZE);
    set.pRangeProfilerObject = object_;
    set.configSize = config.size();
    set.pConfig = config.data();
    set.counterDataImageSize = counter_data_.size();
    set.pCounterDataImage = counter_data_.data();
    set.range = CUPTI_UserRange;
    set.replayMode = CUPTI_UserReplay;
    set.maxRangesPerPass = kRanges;
    set.numNestingLevels = 1;
    set.minNestingLevel = 1;
    set.passIndex = 0;
    set.targetNestingLevel = 1;
    check(cuptiRangeProfilerSetConfig(&set), "cuptiRangeProfilerSetConfig");
  }

  ~Session() {
    if (in_range_) {
      auto pop = cupti_params<CUpti_RangeProfiler_PopRange_Params>(CUpti_RangeProfiler_PopRange_Params_STRUCT_SIZE);
      pop.pRangeProfilerObject = object_;
      static_cast<void>(cuptiRangeProfilerPopRange(&pop));
    }
    if (started_) {
      auto stop = cupti_params<CUpti_RangeProfiler_Stop_Params>(CUpti_RangeProfiler_Stop_Params_STRUCT_SIZE);
      stop.pRangeProfilerObject = object_;
      static_cast<void>(cuptiRangeProfilerStop(&stop));
    }
    auto disable = cupti_params<CUpti_RangeProfiler_Disable_Params>(CUpti_RangeProfiler_Disable_Params_STRUCT_SIZE);
    disable.pRangeProfilerObject = object_;
    static_cast<void>(cuptiRangeProfilerDisable(&disable));
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start() {
    auto start = cupti_params<CUpti_RangeProfiler_Start_Params>(CUpti_RangeProfiler_Start_Params_STRUCT_SIZE);
    start.pRangeProfilerObject = object_;
    check(cuptiRangeProfilerStart(&start), "cuptiRangeProfilerStart");
    started_ = true;
  }

  // Returns true when every pass has been submitted.
  [[nodiscard]] bool stop() {
    auto stop = cupti_params<CUpti_RangeProfiler_Stop_Params>(CUpti_RangeProfiler_Stop_Params_STRUCT_SIZE);
    stop.pRangeProfilerObject = object_;
    started_ = false;
    check(cuptiRangeProfilerStop(&stop), "cuptiRangeProfilerStop");
    return stop.isAllPassSubmitted != 0;
  }

  void push(const char* name) {
    auto push = cupti_params<CUpti_RangeProfiler_PushRange_Params>(CUpti_RangeProfiler_PushRange_Params_STRUCT_SIZE);
    push.pRangeProfilerObject = object_;
    push.pRangeName = name;
    check(cuptiRangeProfilerPushRange(&push), "cuptiRangeProfilerPushRange");
    in_range_ = true;
  }

  void pop() {
    auto pop = cupti_params<CUpti_RangeProfiler_PopRange_Params>(CUpti_RangeProfiler_PopRange_Params_STRUCT_SIZE);
    pop.pRangeProfilerObject = object_;
    in_range_ = false;
    check(cuptiRangeProfilerPopRange(&pop), "cuptiRangeProfilerPopRange");
  }

  // Decodes the collected passes into the counter data image; returns the counter data.
  [[nodiscard]] const std::vector<std::uint8_t>& decode() {
    auto decode =
        cupti_params<CUpti_RangeProfiler_DecodeData_Params>(CUpti_RangeProfiler_DecodeData_Params_STRUCT_SIZE);
    decode.pRangeProfilerObject = object_;
    check(cuptiRangeProfilerDecodeData(&decode), "cuptiRangeProfilerDecodeData");
    if (decode.numOfRangeDropped != 0) {
      throw CudaError(where("cuptiRangeProfilerDecodeData") + ": " + std::to_string(decode.numOfRangeDropped) +
                      " counter ranges dropped");
    }
    return counter_data_;
  }

 private:
  void check(CUptiResult status, const char* call) const { check_cupti(status, call, setup_); }

  bool setup_ = false;
  CUpti_RangeProfiler_Object* object_ = nullptr;
  std::vector<std::uint8_t> counter_data_;
  bool started_ = false;
  bool in_range_ = false;
};

// Metric values of the range named `name` in decoded counter data.
std::vector<double> range_values(CUpti_Profiler_Host_Object* host, const std::vector<std::uint8_t>& counter_data,
                                 const std::vector<const char*>& metrics, const char* name, bool setup) {
  auto info = cupti_params<CUpti_RangeProfiler_GetCounterDataInfo_Params>(
      CUpti_RangeProfiler_GetCounterDataInfo_Params_STRUCT_SIZE);
  info.pCounterDataImage = counter_data.data();
  info.counterDataImageSize = counter_data.size();
  check_cupti(cuptiRangeProfilerGetCounterDataInfo(&info), "cuptiRangeProfilerGetCounterDataInfo", setup);
  for (std::size_t index = 0; index < info.numTotalRanges; ++index) {
    auto range = cupti_params<CUpti_RangeProfiler_CounterData_GetRangeInfo_Params>(
        CUpti_RangeProfiler_CounterData_GetRangeInfo_Params_STRUCT_SIZE);
    range.pCounterDataImage = counter_data.data();
    range.counterDataImageSize = counter_data.size();
    range.rangeIndex = index;
    range.rangeDelimiter = "/";
    check_cupti(cuptiRangeProfilerCounterDataGetRangeInfo(&range), "cuptiRangeProfilerCounterDataGetRangeInfo", setup);
    if (range.rangeName == nullptr || std::string(range.rangeName) != name) continue;

    std::vector<double> values(metrics.size(), 0.0);
    auto evaluate = cupti_params<CUpti_Profiler_Host_EvaluateToGpuValues_Params>(
        CUpti_Profiler_Host_EvaluateToGpuValues_Params_STRUCT_SIZE);
    evaluate.pHostObject = host;
    evaluate.pCounterDataImage = counter_data.data();
    evaluate.counterDataImageSize = counter_data.size();
    evaluate.rangeIndex = index;
    evaluate.ppMetricNames = const_cast<const char**>(metrics.data());
    evaluate.numMetrics = metrics.size();
    evaluate.pMetricValues = values.data();
    check_cupti(cuptiProfilerHostEvaluateToGpuValues(&evaluate), "cuptiProfilerHostEvaluateToGpuValues", setup);
    return values;
  }
  throw CudaError(where("counter data") + ": no range named '" + name + "' among " +
                  std::to_string(info.numTotalRanges));
}

}  // namespace

TrafficProfiler::TrafficProfiler(int device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  DeviceScope scope(device);
  FLASHLAB_TRAFFIC_CUDA(cudaFree(nullptr));  // creates the primary context if it does not exist yet
  check_driver(driver_function<CUresult(CUDAAPI*)(CUcontext*)>("cuCtxGetCurrent")(&impl_->context), "cuCtxGetCurrent");
  if (impl_->context == nullptr) throw CudaError(where("cuCtxGetCurrent") + ": no current context");
  impl_->set_up_flush();
  impl_->set_up_cupti();

  // A probe pass: the permission and configuration problems that only show once counters are collected
  // surface here, as Unsupported.
  static_cast<void>(impl_->run([this] { impl_->read_through_l2(kProbeBytes); }, true));
}

TrafficProfiler::~TrafficProfiler() = default;

const std::string& TrafficProfiler::chip() const {
  return impl_->chip;
}
const std::vector<std::string>& TrafficProfiler::metrics() const {
  return impl_->metrics;
}
std::size_t TrafficProfiler::flush_bytes() const {
  return impl_->flush_bytes;
}

TrafficCounts TrafficProfiler::Impl::run(const std::function<void()>& region, bool setup) {
  DeviceScope scope(device);
  FLASHLAB_TRAFFIC_CUDA(cudaDeviceSynchronize());  // earlier work is not the region's
  const std::vector<const char*> names = metric_names();

  TrafficCounts counts;
  Session session(context, names, config_image, setup);
  for (bool all_submitted = false; !all_submitted;) {
    if (counts.passes == kMaxPasses) {
      throw CudaError(where("measure") + ": CUPTI asked for more than " + std::to_string(kMaxPasses) + " passes");
    }
    // Flush after Start and outside any range: Start itself leaves some megabytes of CUPTI's own writes dirty in
    // L2 (7 MB seen on an H200), which would otherwise be written back, and counted, inside the ranges.
    session.start();
    read_through_l2(flush_bytes);  // cold, clean L2
    session.push(kRegionRange);
    region();
    FLASHLAB_TRAFFIC_CUDA(cudaGetLastError());
    FLASHLAB_TRAFFIC_CUDA(cudaDeviceSynchronize());
    session.pop();
    session.push(kDrainRange);
    read_through_l2(flush_bytes);  // writes back what the region left dirty in L2
    session.pop();
    all_submitted = session.stop();
    ++counts.passes;
  }
  const std::vector<std::uint8_t>& counter_data = session.decode();
  const std::vector<double> in_region = range_values(host, counter_data, names, kRegionRange, setup);
  const std::vector<double> in_drain = range_values(host, counter_data, names, kDrainRange, setup);

  counts.dram_read_bytes = in_region[0];
  counts.dram_write_drained_bytes = in_drain[1];
  counts.dram_write_bytes = in_region[1] + in_drain[1];
  counts.l2_read_bytes = in_region[2] * l2_scale;
  counts.l2_write_bytes = in_region[3] * l2_scale;
  return counts;
}

TrafficCounts TrafficProfiler::measure(const std::function<void()>& region) {
  return impl_->run(region, false);
}

}  // namespace flashlab::harness
