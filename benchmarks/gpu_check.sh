#!/usr/bin/env bash
# Issue 21's GPU check, prepared to fit a lent GPU's budget (15 minutes of device time, 10 a call).
#
# Here (the venv active; a package registry): bash benchmarks/gpu_check.sh wheels
#   fills .gpu/wheels (git-ignored) with what the GPU image lacks: Hydra, omegaconf and its parser runtime.
# There, two calls of the device tool, each carrying .gpu:
#   bash benchmarks/gpu_check.sh core       # ~8 min: pytest -m gpu, zoo-train compiled, zoo-generate with
#                                           # CUDA graphs, bench_gpu.py at 125M (with decoding) and at 1B
#   bash benchmarks/gpu_check.sh studies    # ~4 min: every canned zoo-bench study, a few steps each, on CUDA
# Every step is time-boxed, so one that hangs costs its box and not the call; logs and JSON land in $OUT
# (at most 8 files come back), summary.txt lists each step's exit status and time.
# A dry run of the plumbing here: DEVICE=cpu TRAIN_STEPS=20 OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh core
# (the GPU tests skip and bench_gpu.py refuses; zoo-train and zoo-generate run on the CPU, ~2 minutes).
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = wheels ]; then
    python3 -m pip wheel -q --no-deps -w .gpu/wheels "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.*"
    ls .gpu/wheels
    exit
fi

OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
export WANDB_MODE=offline PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the plumbing here (the GPU tests skip, bench_gpu.py refuses)

# The image has torch, transformers, safetensors, tokenizers, einops, pytest; not Hydra (nothing can be fetched).
python3 -m pip install -q --no-index --no-deps .gpu/wheels/*.whl >> "$SUMMARY" 2>&1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$SUMMARY" 2>&1 || echo "editable install failed" >> "$SUMMARY"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
} >> "$SUMMARY" 2>&1

BUDGET=${BUDGET:-570}  # seconds this call may take in all (the device tool's limit is 600)
step() {  # step NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, its output in $OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    if ((BUDGET - SECONDS < limit)); then limit=$((BUDGET - SECONDS)); fi
    if ((limit < 15)); then echo "$name: skipped, the call's budget is spent" | tee -a "$SUMMARY"; return; fi
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - start)) s (limit $limit)" | tee -a "$SUMMARY"
}

case "${1:-core}" in
core)
    step pytest_gpu 150 python3 -m pytest -m gpu -n 0 -p no:cacheprovider tests/test_cuda.py tests/attention/test_kernels.py \
        tests/generation/test_static.py
    step train 150 python3 -m zoo.train trainer.device="$DEVICE" trainer.compile=true trainer.max_steps="${TRAIN_STEPS:-200}" logger=none \
        hydra.run.dir="$PWD/gpu_run"
    step generate 90 python3 -m zoo.generate checkpoint="$PWD/gpu_run" device="$DEVICE" compiled=true max_new_tokens=256
    step bench_125m 200 python3 benchmarks/bench_gpu.py --sizes 125m --hf-static --json "$OUT/bench_125m.json"
    step bench_1b 150 python3 benchmarks/bench_gpu.py --sizes 1b --no-decode --json "$OUT/bench_1b.json"
    ;;
studies)
    # a few steps of every job of every study: each runs on CUDA end to end (figures need the full budgets)
    SMOKE=(trainer.device="$DEVICE" logger=none trainer.quiet=true trainer.max_steps=6 bench.budget.kind=steps bench.budget.value=6
        "bench.seeds=[0]" bench.lr.screen_steps=3 bench.mqar.steps=6 trainer.eval_every=0 trainer.final_eval_batches=2
        bench.speed.steps=1 bench.speed.warmup=1 "bench.speed.seq_lens=[]" bench.extrapolation.eval_tokens=1024
        bench.continuation.batches=2 bench.speed.fill_gpu=false
        bench.speed.prompt_len=8 bench.speed.new_tokens=8)
    # in this order until the call's budget is spent; STUDIES="moe arch" runs the rest in another call
    for study in ${STUDIES:-quick efficient mixers attention modern moe arch uptrain pos ffn norms norms_stress peers}; do
        step "study_$study" 120 python3 -m zoo.bench "study=$study" "${SMOKE[@]}" hydra.sweep.dir="$PWD/gpu_studies/$study"
    done
    # one log back for all: each study's last lines
    for f in "$OUT"/study_*.log; do echo "== $f"; tail -n 25 "$f"; done > "$OUT/studies.log"
    rm -f "$OUT"/study_*.log
    ;;
*)
    echo "usage: $0 wheels | core | studies" >&2
    exit 2
    ;;
esac
