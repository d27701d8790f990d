#!/usr/bin/env bash
# The one prepared device run (../shared/device/README.md): GPU tests and GPU benchmarks, logs under $OUT.
#
#   ../shared/device/prepare.sh                      # here, once: fills .devkit/ (git-ignored)
#   device run, carry [".devkit"], timeout ~540 s:   bash bench/gpu_check.sh [generate|train|all]
#
#   generate (default): the gpu-marked generation tests, then bench/generate.py (SD 2.1 base + Shap-E at
#                       full size, random weights: s/step, 1200-step projection, peak memory); ~3-4 min.
#   train:              the other gpu-marked tests, then bench/train.py (ours vs a plain gsplat loop).
#   all:                both.
# Each part has its own time limit, so one that hangs still leaves the others' figures in $OUT.
set -uo pipefail
: "${OUT:?OUT must name a folder for the logs}"
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .devkit/on-device.sh
what="${1:-generate}"
status=0
run() {  # run NAME LIMIT_S CMD...: output to $OUT/NAME.log, exit status noted in $OUT/summary.txt
    local name="$1" limit="$2"; shift 2
    local start; start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
case "$what" in
    generate|all)
        run gpu_tests_generate 240 python3 -m pytest -q -p no:cacheprovider -m gpu \
            tests/test_generate.py tests/test_sds_analytic.py
        run bench_generate 300 python3 bench/generate.py --json "$OUT/bench_generate.json" ;;
esac
case "$what" in
    train|all)
        run gpu_tests_other 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests \
            --deselect tests/test_generate.py --deselect tests/test_sds_analytic.py
        run bench_train 300 python3 bench/train.py --out "$OUT/bench_train.json" ;;
esac
case "$what" in generate|train|all) ;; *) echo "unknown part '$what' (generate, train, all)"; exit 2 ;; esac
exit "$status"
