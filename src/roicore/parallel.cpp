#include "roicore/parallel.h"

#include <algorithm>
#include <atomic>

namespace roicore {

namespace {
int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}
std::atomic<int> g_threads{0};  // 0: hardware default
}  // namespace

int default_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return std::min(n > 0 ? n : hardware_threads(), kMaxThreads);
}

void set_default_num_threads(int n) { g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

}  // namespace roicore
