// parallel_for: every item once, worker ids in range, exceptions rethrown; default_worker_count and
// FLASHLAB_THREADS.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>  // getenv; setenv and unsetenv (POSIX) in the global namespace
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "flashlab/core/parallel.hpp"

namespace flashlab {
namespace {

// Sets FLASHLAB_THREADS (or unsets it, for nullopt) for one scope and restores the previous value.
class ThreadsVariable {
 public:
  explicit ThreadsVariable(const std::optional<std::string>& value) {
    if (const char* old = std::getenv(kName)) previous_ = old;
    set(value);
  }
  ~ThreadsVariable() { set(previous_); }
  ThreadsVariable(const ThreadsVariable&) = delete;
  ThreadsVariable& operator=(const ThreadsVariable&) = delete;

 private:
  static constexpr const char* kName = "FLASHLAB_THREADS";
  static void set(const std::optional<std::string>& value) {
    if (value) {
      ::setenv(kName, value->c_str(), 1);
    } else {
      ::unsetenv(kName);
    }
  }
  std::optional<std::string> previous_;
};

struct CustomError {
  std::int64_t item;
};

}  // namespace

TEST_CASE("parallel_for visits every item exactly once with worker ids in range", "[parallel]") {
  const std::int64_t items = GENERATE(0, 1, 7, 1000);
  const int workers = GENERATE(1, 2, 5);
  INFO(items << " items on " << workers << " workers");
  std::vector<std::atomic<int>> visits(static_cast<std::size_t>(items));
  std::atomic<int> bad_worker{0};
  parallel_for(items, workers, [&](std::int64_t item, int worker) {
    visits[static_cast<std::size_t>(item)]++;
    if (worker < 0 || worker >= workers) bad_worker++;
  });
  CHECK(bad_worker == 0);
  CHECK(std::all_of(visits.begin(), visits.end(), [](const std::atomic<int>& v) { return v == 1; }));
}

TEST_CASE("parallel_for uses more than one thread when asked", "[parallel]") {
  // Items that wait for each other can only finish if two workers run at once.
  std::atomic<int> arrived{0};
  std::atomic<bool> overlapped{false};
  parallel_for(2, 2, [&](std::int64_t, int) {
    arrived++;
    for (int spin = 0; spin < 2000000 && arrived < 2; ++spin) std::this_thread::yield();
    if (arrived == 2) overlapped = true;
  });
  CHECK(overlapped);
}

TEST_CASE("parallel_for rethrows an exception thrown by an item", "[parallel]") {
  const int workers = GENERATE(1, 2, 5);
  INFO(workers << " workers");
  CHECK_THROWS_WITH(parallel_for(100, workers,
                                 [](std::int64_t item, int) {
                                   if (item == 37) throw std::runtime_error("item 37 failed");
                                 }),
                    "item 37 failed");
  // Any type, not only std::exception.
  bool caught = false;
  try {
    parallel_for(100, workers, [](std::int64_t item, int) {
      if (item == 0) throw CustomError{item};
    });
  } catch (const CustomError& error) {
    caught = error.item == 0;
  }
  CHECK(caught);
  // One failing item with more workers than items.
  CHECK_THROWS_AS(parallel_for(1, workers, [](std::int64_t, int) { throw std::logic_error("only item"); }),
                  std::logic_error);
}

TEST_CASE("default_worker_count honours FLASHLAB_THREADS", "[parallel]") {
  const int hardware = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  {
    const ThreadsVariable unset(std::nullopt);
    CHECK(default_worker_count() == hardware);
  }
  {
    const ThreadsVariable three("3");
    CHECK(default_worker_count() == 3);
  }
  {
    const ThreadsVariable one("1");
    CHECK(default_worker_count() == 1);
  }
  {
    const ThreadsVariable many("64");
    CHECK(default_worker_count() == 64);
  }
  for (const char* garbage : {"", "zero", "0", "-2", "4x", "99999999999999999999"}) {
    INFO("FLASHLAB_THREADS='" << garbage << "'");
    const ThreadsVariable bad{std::string(garbage)};
    CHECK(default_worker_count() == hardware);
    // the programs refuse such a value with this line instead of running on another count
    const std::string problem = worker_count_problem();
    CHECK(problem.find("FLASHLAB_THREADS = '" + std::string(garbage) + "'") == 0);
    CHECK(problem.find('\n') == std::string::npos);
  }
  for (const char* fine : {"1", "3", "64"}) {
    const ThreadsVariable good{std::string(fine)};
    CHECK(worker_count_problem().empty());
  }
  const ThreadsVariable unset(std::nullopt);
  CHECK(worker_count_problem().empty());
}

}  // namespace flashlab
