#include "flashlab/core/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace flashlab {

int default_worker_count() {
  if (const char* env = std::getenv("FLASHLAB_THREADS")) {
    try {
      std::size_t parsed = 0;
      const int n = std::stoi(env, &parsed);
      if (n >= 1 && parsed == std::string(env).size()) return n;
    } catch (const std::exception&) {
      // fall through to the hardware count: a malformed variable must not stop a run
    }
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string worker_count_problem() {
  const char* env = std::getenv("FLASHLAB_THREADS");
  if (env == nullptr) return {};
  const std::string text = env;
  const bool digits = !text.empty() && text.size() <= 6 && text.find_first_not_of("0123456789") == std::string::npos;
  if (digits && std::stoi(text) >= 1) return {};
  return "FLASHLAB_THREADS = '" + text + "': must be a whole number >= 1 (the worker threads of the CPU code)";
}

void parallel_for(std::int64_t items, int workers, const std::function<void(std::int64_t, int)>& fn) {
  if (items <= 0) return;
  workers = static_cast<int>(std::clamp<std::int64_t>(workers, 1, items));
  std::atomic<std::int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto work = [&](int worker) {
    for (std::int64_t item = next++; item < items && !failed; item = next++) {
      try {
        fn(item, worker);
      } catch (...) {
        const std::lock_guard lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(workers - 1));
  for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace flashlab
