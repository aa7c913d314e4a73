// A small fork-join helper over std::thread: work items are claimed in order from an atomic counter.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace flashlab {

// Worker count: FLASHLAB_THREADS if it is a whole number >= 1, else the hardware concurrency.
[[nodiscard]] int default_worker_count();
// The problem with FLASHLAB_THREADS when it is set but not a whole number >= 1 (one line), else empty: the programs
// refuse to start on it rather than run on another count than asked.
[[nodiscard]] std::string worker_count_problem();

// Calls fn(item, worker) for every item in [0, items) on up to `workers` threads (worker in [0, workers)).
// The first exception thrown by fn is rethrown here after all workers have stopped.
void parallel_for(std::int64_t items, int workers,
                  const std::function<void(std::int64_t item, int worker)>& fn);

}  // namespace flashlab
