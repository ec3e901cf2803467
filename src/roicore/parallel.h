// roicore — minimal fork-join parallelism over an index range.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace roicore {

// Upper bound on the threads of one call: a request above it (e.g. threads=2**31-1) is
// clamped, so per-thread bookkeeping stays small and no call tries to start millions of
// threads.
constexpr int kMaxThreads = 1024;

// Default number of worker threads (hardware concurrency, at least 1), settable.
int default_num_threads();
void set_default_num_threads(int n);  // n <= 0 restores the hardware default

// Resolve a per-call thread request: <= 0 means the default; at most kMaxThreads.
inline int resolve_threads(int requested) {
  const int n = requested > 0 ? requested : default_num_threads();
  return std::min(n, kMaxThreads);
}

// Calls fn(begin, end, worker) on `threads` contiguous chunks of [0, n). The calling
// thread runs chunk 0. Runs inline when threads <= 1 or n is below `min_per_thread`
// items per thread. Exceptions thrown by fn are rethrown (the first one) after all
// chunks have finished. When the system refuses to start a thread (thread limit,
// memory), the chunks that have no thread run on the calling thread instead.
template <class Fn>
void parallel_for(std::size_t n, int threads, std::size_t min_per_thread, Fn&& fn) {
  if (n == 0) return;
  std::size_t t = threads < 1 ? 1 : static_cast<std::size_t>(std::min(threads, kMaxThreads));
  if (min_per_thread > 0) t = std::min(t, std::max<std::size_t>(1, n / min_per_thread));
  t = std::min(t, n);
  if (t <= 1) {
    fn(std::size_t{0}, n, 0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mu;
  auto run = [&](std::size_t w) {
    const std::size_t b = n * w / t, e = n * (w + 1) / t;
    try {
      fn(b, e, static_cast<int>(w));
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mu);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  std::size_t started = 1;  // chunks [1, started) have a thread
  try {
    pool.reserve(t - 1);
    for (; started < t; ++started) pool.emplace_back(run, started);
  } catch (...) {  // std::system_error (EAGAIN) or std::bad_alloc: run the rest here
  }
  run(0);
  for (std::size_t w = started; w < t; ++w) run(w);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace roicore
