// HBM and L2 traffic of a region of GPU work, counted by the GPU's hardware counters through the CUPTI Range
// Profiler (DESIGN.md §4). What is counted and how it is cross-checked with Nsight Compute: harness/TRAFFIC.md.
//
// Compiled only when the build has CUDA. No CUDA or CUPTI type appears here.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace flashlab::harness {

// Bytes moved by one execution of a region. Counts are of the whole device while the region ran, summed over
// every kernel (and copy) the region launched.
struct TrafficCounts {
  double dram_read_bytes = 0;           // dram__bytes_read.sum: bytes read from HBM
  double dram_write_bytes = 0;          // dram__bytes_write.sum: bytes written to HBM, including the write-back of
                                        // the lines the region left dirty in L2 (dram_write_drained_bytes)
  double dram_write_drained_bytes = 0;  // the part of dram_write_bytes written back after the region ended, when
                                        // the profiler drained L2; Nsight Compute does not see these bytes
  double l2_read_bytes = 0;             // L2 read requests from the SMs (L1/TEX), 32-byte sectors x 32
  double l2_write_bytes = 0;            // L2 write requests from the SMs (L1/TEX), 32-byte sectors x 32
  int passes = 0;                       // times the region ran (hardware counter passes)
};

// Collects TrafficCounts of a region of GPU work on one device.
//
// measure() runs the region once per counter pass (one pass on Hopper for these metrics; the loop runs as many
// as CUPTI asks for). Before each pass it flushes L2 by reading a buffer twice the size of L2, so every pass
// starts from the same cold, clean L2; after the region it drains L2 the same way, in a second counter range, so
// the bytes the region left dirty in L2 are counted as HBM writes too. The profiler restores nothing between
// passes: the region must be re-runnable, each run moving the same bytes (an attention forward that overwrites
// its outputs is; an in-place update whose traffic depends on earlier runs is not).
//
// While an object exists, CUPTI's profiler is initialised in the process. Keep it out of timed work: time first,
// or destroy it before timing. Another CUPTI profiling client in the process (Nsight Compute, for one) makes the
// constructor throw Unsupported.
class TrafficProfiler {
 public:
  // Sets up counter collection on `device` and runs one small probe pass, so that a GPU without counter access
  // fails here. Throws flashlab::Unsupported with a one-line reason when CUPTI profiling is unavailable (no
  // permission to read the counters, ERR_NVGPUCTRPERM; unsupported device or configuration; another profiler
  // active; a metric the chip lacks; CUPTI's libnvperf libraries missing), flashlab::CudaError when a CUDA
  // runtime call fails.
  explicit TrafficProfiler(int device = 0);
  ~TrafficProfiler();
  TrafficProfiler(const TrafficProfiler&) = delete;
  TrafficProfiler& operator=(const TrafficProfiler&) = delete;

  // Runs `region` once per pass and returns the counts of one run. The region launches its work on any stream
  // of the device's primary context (the runtime's default context) and returns; the profiler synchronizes the
  // device after it. Work already queued is finished before the first pass and is not counted. The device is
  // made current during the call and the caller's current device restored after it. Throws flashlab::CudaError
  // on failure, flashlab::Unsupported when counter access is lost; exceptions from `region` propagate after the
  // profiler has been stopped.
  [[nodiscard]] TrafficCounts measure(const std::function<void()>& region);

  // Provenance for run.json: the chip name CUPTI reports (e.g. "GH100") and the metric names collected.
  [[nodiscard]] const std::string& chip() const;
  [[nodiscard]] const std::vector<std::string>& metrics() const;
  // Bytes of the buffer read to flush and drain L2 (twice the device's L2 size).
  [[nodiscard]] std::size_t flush_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashlab::harness
