#!/usr/bin/env bash
# Run the binding tests (fuzz, kernels, inverted files) against a roiret._core built with
# AddressSanitizer + UndefinedBehaviorSanitizer, loaded into the normal interpreter with
# LD_PRELOAD. Catches what the native tests cannot: memory errors and UB in the bindings
# and in pybind11 itself (it found a signed overflow in pybind11's stride computation for
# a (0, 2**62) output). Linux + GCC; needs the dev venv (scripts/setup).
#
#   cpp/tests/asan_python.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
BUILD=build/asan-python
PKG=$BUILD/pkg
"$PY" -c "import pybind11" >/dev/null
cmake -S . -B "$BUILD" -DROIRET_BUILD_PYTHON=ON -DROIRET_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" >/dev/null
cmake --build "$BUILD" --parallel 2 --target _core
rm -rf "$PKG" && mkdir -p "$PKG/roiret_asan" && touch "$PKG/roiret_asan/__init__.py"
cp "$BUILD"/_core*.so "$PKG/roiret_asan/"
# Load the sanitized module in place of roiret._core, then run pytest in this process.
cat > "$PKG/run.py" <<PYEOF
import sys
sys.path.insert(0, "$PKG")
import roiret_asan._core as core
sys.modules["roiret._core"] = core
import roiret
roiret._core = core
import roiret._kernels
assert roiret._kernels._core is core
import pytest
sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider"] + sys.argv[1:]))
PYEOF
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec "$PY" "$PKG/run.py" tests/test_fuzz_bindings.py tests/test_kernels.py tests/test_inverted_file.py \
  tests/test_embedded_file.py "$@"
