#!/usr/bin/env bash
# Runs the op tests against AddressSanitizer builds (`make asan`): the TF op library with ASan,
# the kernel core and pybind11 module with ASan + UBSan (TF's absl headers do not compile under
# -fsanitize=undefined). The instrumented libraries go to build/asan/pkg, never into the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
OUT=$PWD/build/asan
EXT=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
rm -rf "$OUT/pkg" "$OUT/run" && mkdir -p "$OUT/pkg/tfrec_kuai" "$OUT/run/tests"
cmake -S . -B "$OUT/build" -DPython_EXECUTABLE="$PY" -DTFREC_KUAI_SANITIZE=ON \
  -DTFREC_KUAI_OPS_OUTPUT="$OUT/pkg/tfrec_kuai/_fwa_ops.so" \
  -DTFREC_KUAI_NATIVE_OUTPUT="$OUT/pkg/tfrec_kuai/_native$EXT"
cmake --build "$OUT/build" -j2
cp tfrec_kuai/__init__.py tfrec_kuai/ops.py "$OUT/pkg/tfrec_kuai/"
cp tests/__init__.py tests/native_required.py tests/test_ops.py "$OUT/run/tests/"
cd "$OUT/run"
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  PYTHONPATH="$OUT/pkg" "$PY" -m pytest tests/test_ops.py -q -p no:cacheprovider
