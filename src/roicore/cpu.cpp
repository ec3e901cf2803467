#include "roicore/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "roicore/common.h"

#if defined(ROICORE_X86)
#include <cpuid.h>
#endif

namespace roicore {

namespace {

#if defined(ROICORE_X86)
std::uint64_t xgetbv0() {
  std::uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}
#endif

SimdLevel detect() {
#if defined(ROICORE_X86)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return SimdLevel::kGeneric;
  const bool popcnt = (c >> 23) & 1;
  const bool osxsave = (c >> 27) & 1;
  if (!popcnt) return SimdLevel::kGeneric;
  SimdLevel level = SimdLevel::kPopcnt;
  if (!osxsave) return level;
  const std::uint64_t xcr0 = xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;           // XMM and YMM state
  const bool os_avx512 = (xcr0 & 0xE6) == 0xE6;      // + opmask, ZMM_Hi256, Hi16_ZMM
  unsigned a7, b7, c7, d7;
  if (__get_cpuid_max(0, nullptr) < 7) return level;
  __cpuid_count(7, 0, a7, b7, c7, d7);
  const bool avx2 = (b7 >> 5) & 1;
  const bool avx512f = (b7 >> 16) & 1;
  const bool avx512bw = (b7 >> 30) & 1;
  const bool avx512vl = (b7 >> 31) & 1;
  const bool vpopcntdq = (c7 >> 14) & 1;
  if (os_avx && avx2) level = SimdLevel::kAvx2;
  if (os_avx512 && avx512f && avx512bw && avx512vl && vpopcntdq) level = SimdLevel::kAvx512;
  return level;
#else
  return SimdLevel::kGeneric;
#endif
}

SimdLevel initial_level() {
  const SimdLevel best = detect();
  const char* env = std::getenv("ROIRET_SIMD");
  if (env == nullptr || *env == '\0') return best;
  try {
    const SimdLevel want = parse_simd_level(env);
    return static_cast<int>(want) < static_cast<int>(best) ? want : best;
  } catch (const InvalidArgument&) {
    // An unknown value is ignored (never an error): the best level runs. The binding is
    // silent about it; the Python package (roiret._kernels) warns at import.
    return best;
  }
}

std::atomic<int>& level_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_level())};
  return slot;
}

}  // namespace

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kGeneric: return "generic";
    case SimdLevel::kPopcnt: return "popcnt";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvx512: return "avx512";
  }
  return "unknown";
}

SimdLevel parse_simd_level(const std::string& name) {
  for (int i = 0; i <= 3; ++i) {
    const auto l = static_cast<SimdLevel>(i);
    if (name == simd_level_name(l)) return l;
  }
  throw InvalidArgument("unknown SIMD level '" + name +
                        "'; expected one of 'generic', 'popcnt', 'avx2', 'avx512'");
}

SimdLevel detected_simd_level() {
  static const SimdLevel level = detect();
  return level;
}

std::vector<SimdLevel> supported_simd_levels() {
  std::vector<SimdLevel> out;
  for (int i = 0; i <= static_cast<int>(detected_simd_level()); ++i)
    out.push_back(static_cast<SimdLevel>(i));
  return out;
}

SimdLevel active_simd_level() {
  return static_cast<SimdLevel>(level_slot().load(std::memory_order_relaxed));
}

SimdLevel set_simd_level(SimdLevel level) {
  if (static_cast<int>(level) > static_cast<int>(detected_simd_level())) {
    throw InvalidArgument(std::string("SIMD level '") + simd_level_name(level) +
                          "' is not supported by this CPU (highest: '" +
                          simd_level_name(detected_simd_level()) + "')");
  }
  return static_cast<SimdLevel>(level_slot().exchange(static_cast<int>(level)));
}

}  // namespace roicore
