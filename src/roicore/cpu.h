// roicore — CPU feature detection and SIMD level selection.
//
// Every Hamming kernel exists in several variants, each compiled in its own translation
// unit with its own instruction-set flags (never a host-tuned -march flag). The variant that runs
// is chosen once from cpuid (and XGETBV for OS support of the vector state); it can be
// lowered for testing with set_simd_level() or the ROIRET_SIMD environment variable
// ("generic", "popcnt", "avx2", "avx512"), read the first time a kernel runs.
#pragma once

#include <string>
#include <vector>

namespace roicore {

enum class SimdLevel : int {
  kGeneric = 0,  // portable C++, SWAR popcount: any CPU
  kPopcnt = 1,   // x86-64-v2: hardware POPCNT, scalar loops
  kAvx2 = 2,     // AVX2: nibble-table popcount (vpshufb + vpsadbw)
  kAvx512 = 3,   // AVX-512F/BW/VL + VPOPCNTDQ
};

const char* simd_level_name(SimdLevel level);
// Parses a level name; throws InvalidArgument listing the valid names.
SimdLevel parse_simd_level(const std::string& name);

// Highest level this CPU and OS support.
SimdLevel detected_simd_level();
// All levels that can run here, lowest first.
std::vector<SimdLevel> supported_simd_levels();
// Level in use (detected level, or ROIRET_SIMD / the last set_simd_level()).
SimdLevel active_simd_level();
// Force a level; throws InvalidArgument if the CPU cannot run it. Returns the previous one.
SimdLevel set_simd_level(SimdLevel level);

}  // namespace roicore
