// A small fork-join helper over std::thread: work items are claimed in order from an atomic counter.
#pragma once

#include <cstdint>
#include <functional>

namespace flashlab {

// Worker count: FLASHLAB_THREADS if it is a whole number >= 1, else the hardware concurrency.
[[nodiscard]] int default_worker_count();

// Calls fn(item, worker) for every item in [0, items) on up to `workers` threads (worker in [0, workers)).
// The first exception thrown by fn is rethrown here after all workers have stopped.
void parallel_for(std::int64_t items, int workers,
                  const std::function<void(std::int64_t item, int worker)>& fn);

}  // namespace flashlab
