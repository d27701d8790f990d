#!/usr/bin/env bash
# The one prepared device run (../shared/device/README.md): GPU tests and GPU benchmarks, logs under $OUT.
#
#   ../shared/device/prepare.sh                      # here, once: fills .devkit/ (git-ignored)
#   .venv/bin/python bench/quality_scenes.py --size 256   # here, once: the 256 px scenes (bpy) into bench/.cache
#   device run, carry [".devkit", "bench/.cache"], timeout ~560 s:   bash bench/gpu_check.sh generate,train,quality
#   DRY_RUN=1 OUT=/tmp/gc bash bench/gpu_check.sh all   # here, on the CPU: what a CPU can check (see below)
#
#   generate (default): the gpu-marked generation tests, then bench/generate.py (SD 2.1 base + Shap-E at
#                       full size, random weights: s/step, 1200-step projection, peak memory); ~3-4 min.
#   train:              the other gpu-marked tests, then bench/train.py (ours vs a plain gsplat loop).
#   quality:            bench/quality.py at 256 px on gsplat's CUDA rasterizer: ours (default, MCMC) vs the
#                       plain gsplat loop, both scenes, 500..7000 steps; rows land in $OUT/quality_256.json
#                       as they finish (~4-6 min; its limit cuts it short, keeping the rows so far).
#   all:                generate, train and quality. Parts combine with commas: generate,train,quality.
# Each part has its own time limit, so one that hangs still leaves the others' figures in $OUT.
# DRY_RUN=1 (no GPU): no device set-up; the GPU tests are only collected, the benchmarks only parse
# their arguments (--help), and the quality curve runs for real on the CPU with a few steps at 256 px,
# which checks the cached scenes and the whole script path.
set -uo pipefail
: "${OUT:?OUT must name a folder for the logs}"
cd "$(dirname "$0")/.."
what="${1:-generate}"
[ "$what" = all ] && what=generate,train,quality
dry="${DRY_RUN:-0}"
PY=python3
if [ "$dry" = 1 ]; then
    PY="${PYTHON:-.venv/bin/python}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    # shellcheck disable=SC1091
    source .devkit/on-device.sh
fi
status=0
has() { case ",$what," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
run() {  # run NAME LIMIT_S CMD...: output to $OUT/NAME.log, exit status noted in $OUT/summary.txt
    local name="$1" limit="$2"; shift 2
    local start; start=$(date +%s)
    timeout "$limit" bash -c '"$@"' run "$@" > "$OUT/$name.log" 2>&1     # (bash: the helpers below are functions)
    local rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
}
pytest_gpu() {  # pytest_gpu ARGS...: the gpu-marked tests (DRY_RUN: collected only)
    if [ "$dry" = 1 ]; then "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only "$@"
    else python3 -m pytest -q -p no:cacheprovider -m gpu "$@"; fi
}
bench() {  # bench SCRIPT ARGS...: a benchmark (DRY_RUN: its argument parsing and imports only)
    local script="$1"; shift
    if [ "$dry" = 1 ]; then "$PY" "$script" --help > /dev/null && echo "$script: arguments parse; would run: $*"
    else python3 "$script" "$@"; fi
}
export -f pytest_gpu bench
export dry PY
if [ "$dry" = 1 ]; then
    echo "DRY_RUN: no GPU set-up" | tee "$OUT/gpu.txt"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
fi
for part in ${what//,/ }; do
    case "$part" in generate|train|quality) ;; *) echo "unknown part '$part' (generate, train, quality, all)"; exit 2 ;; esac
done
if has generate; then
    run gpu_tests_generate 240 pytest_gpu tests/test_generate.py tests/test_sds_analytic.py
    run bench_generate 300 bench bench/generate.py --json "$OUT/bench_generate.json"
fi
if has train; then
    run gpu_tests_other 240 pytest_gpu tests --deselect tests/test_generate.py --deselect tests/test_sds_analytic.py
    run bench_train 300 bench bench/train.py --out "$OUT/bench_train.json"
fi
if has quality; then
    if [ "$dry" = 1 ]; then
        run quality_256 600 "$PY" bench/quality.py --size 256 --device cpu --steps 20 40 --scenes alpha opaque \
            --json "$OUT/quality_256.json"
    else
        run quality_256 330 python3 bench/quality.py --size 256 --device cuda --json "$OUT/quality_256.json"
    fi
fi
exit "$status"
