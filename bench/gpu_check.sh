#!/usr/bin/env bash
# Every GPU measurement of the project in one run of at most 9 minutes, ending in one summary.
#
# WHAT TRAVELS to the GPU machine (Python 3.12 with torch, triton, transformers, scikit-learn,
# tiktoken, PyYAML, tqdm; no network):
#   - the working tree, as the device tool sends it (tracked files with data/files: ~24 MiB);
#   - .whl/gpu: the wheels it lacks (optuna, SQLAlchemy, alembic, Mako, colorlog, plotly: ~15 MiB),
#     git-ignored, made here once with
#         bash bench/gpu_check.sh --fetch-wheels
#     and named in the run's `carry`. Nothing else: the token cache (.cache/, 25 MiB) is rebuilt
#     there in seconds, and 64 MiB is the limit of what travels.
#
# THE ONE COMMAND (device tool: run, carry [".whl/gpu"], timeout_s 600):
#     bash bench/gpu_check.sh
# It writes $OUT/summary.md (the tables and each step's status, ready for BENCHMARKS.md) and
# $OUT/gpu_check.tar.gz (every log, table and study), both rewritten after every step, so a run cut
# short keeps what it measured. `bash bench/gpu_check.sh DIR` writes them to DIR instead.
#
# Steps, each time-boxed with `timeout` (seconds in BOXES below; they add up to 540, first guesses
# until a run on the GPU times them) so one failure or overrun does not cost the others:
#   a. pytest -m gpu, then the kernel and compile tests on CUDA. Both under
#      torch.use_deterministic_algorithms(True, warn_only=True), where our kernels run their first
#      config instead of autotuning every one: correctness of the kernels in minutes, not tens of
#      minutes of compiles. The tuned configs are checked by step b's error columns.
#   b. bench/attention.py, bidirectional and causal: the four shapes, forward and forward+backward,
#      bf16, ours against SDPA (with its backend) and the reference; a large-logit check in float64.
#   c. bench/train.py: our training step against HF BertForMaskedLM (eager and torch.compile), bf16
#      autocast, tiny/small/base at S=128 and base at S=512, MFU against a bf16 matmul, peak memory.
#   d. bench/trial_throughput.py: trials per hour with 1, 2 and 4 workers on the GPU (tiny trials).
#   e. bench/learning_curve.py --quick --budget_seconds 120, when that file exists.
#   f. main.py compare: the README's headline grid (4 attention kinds x MLM/CLM x 3 seeds at 2M tokens), 4
#      workers on the GPU, our Triton kernels: the CPU table's cells again, through the kernels, in minutes.
#   g. bench/time_to_gain.py --device cuda: ours against Hugging Face (recipe, defaults) at 10, 20 and 40 s
#      of training, bf16, one seed, the three ways side by side on the GPU.
#
# REHEARSAL on the CPU (CI runs it): `bash bench/gpu_check.sh --rehearse [DIR]` runs every step at
# toy sizes (TRITON_INTERPRET=1 for the kernels) through the same commands, and exits non-zero if
# any step failed.
set -uo pipefail
THREE_WAYS="ours,HF recipe,HF defaults"  # step g: the peer's LR sweep (HF one LR) is the CPU benchmark's, not this check's
cd "$(dirname "$0")/.." || exit 2

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]/#/--platform=}" -d .whl/gpu -r requirements-gpu-wheels.txt
fi

REHEARSE=0
if [[ "${1:-}" == "--rehearse" ]]; then
    REHEARSE=1
    shift
fi
RESULTS="${1:-${OUT:-}}"
if [[ -z "$RESULTS" ]]; then
    if ((REHEARSE)); then
        RESULTS="$(mktemp -d)"
    else
        echo "bench/gpu_check.sh: give a results folder, or run where \$OUT is set (the device machine)" >&2
        exit 2
    fi
fi
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
WORK="$(mktemp -d)/gpu_check"
mkdir -p "$WORK"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

if ((REHEARSE)); then
    export TRITON_INTERPRET=1
    # Generous boxes: the rehearsal checks the commands, not the timings.
    declare -A BOXES=([a1]=300 [a2]=120 [b1]=300 [b2]=300 [c]=300 [d]=300 [e]=600 [f]=300 [g]=300)
else
    if [[ -d .whl/gpu ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu_check_site .whl/gpu/*.whl || exit 3
        export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # cuBLAS is deterministic with this workspace setting (step a runs deterministic algorithms).
    export CUBLAS_WORKSPACE_CONFIG=:4096:8
    declare -A BOXES=([a1]=50 [a2]=30 [b1]=50 [b2]=40 [c]=80 [d]=50 [e]=70 [f]=120 [g]=50)
fi

STATUS_LINES=()
SECTIONS=()
FAILED=0

# Run one step: name, title, the markdown file it writes (or "" for its log's tail), command...
step() {
    local name="$1" title="$2" table="$3"
    shift 3
    local box="${BOXES[$name]}" log="$WORK/$name.log" started=$SECONDS status
    echo "== $name: $title (at most $box s)"
    timeout --kill-after=15 "$box" "$@" >"$log" 2>&1
    local code=$?
    case $code in
        0) status="ok" ;;
        124 | 137) status="timed out after $box s" ;;
        *) status="failed (exit $code)" ;;
    esac
    ((code == 0)) || FAILED=1
    STATUS_LINES+=("| $name | $title | $status | $((SECONDS - started)) |")
    local body
    if [[ -n "$table" && -s "$table" ]]; then
        body="$(cat "$table")"
    else
        local fence='```'
        body="$fence"$'\n'"$(tail -n 25 "$log")"$'\n'"$fence"
    fi
    SECTIONS+=("### $name. $title ($status)"$'\n\n'"$body")
    echo "   $status in $((SECONDS - started)) s"
    write_summary
}

write_summary() {
    {
        echo "## GPU check ($(date -u +%Y-%m-%d), $MACHINE)"
        echo
        echo "\`bash bench/gpu_check.sh$( ((REHEARSE)) && echo ' --rehearse')\`, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo
        echo "| step | what | status | seconds |"
        echo "|---|---|---|---:|"
        printf '%s\n' "${STATUS_LINES[@]}"
        for section in "${SECTIONS[@]}"; do
            printf '\n%s\n' "$section"
        done
    } >"$RESULTS/summary.md"
    cp "$RESULTS/summary.md" "$WORK/summary.md"
    tar -czf "$RESULTS/gpu_check.tar.gz" -C "$(dirname "$WORK")" gpu_check
}

describe_machine() {
    "$PYTHON" - <<'EOF' 2>/dev/null || echo "python unavailable"
import platform, torch, triton
device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU, no GPU"
print(f"{device}; Python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}")
EOF
}

MACHINE="$(describe_machine)"

# Deterministic algorithms for a pytest run: our kernels then skip autotuning (see kernels/common.py).
DETERMINISTIC_PYTEST=(-c 'import sys, torch, pytest; torch.use_deterministic_algorithms(True, warn_only=True); sys.exit(pytest.main(sys.argv[1:]))')
KERNEL_TESTS=(tests/test_softmax_kernel.py tests/test_stickbreaking_kernel.py tests/test_compile.py)

if ((REHEARSE)); then
    # The CPU suite runs the kernel tests already (CI's pytest): here they are only collected.
    step a1 "pytest -m gpu" "" "$PYTHON" "${DETERMINISTIC_PYTEST[@]}" -q -rA -m gpu tests
    step a2 "kernel and compile tests (collected)" "" "$PYTHON" "${DETERMINISTIC_PYTEST[@]}" -q --co "${KERNEL_TESTS[@]}"
    ATTENTION=(--rehearse)
    TRAIN=(--rehearse)
    THROUGHPUT=(--rehearse --seconds 15)
    CURVE=(--quick --budget_seconds 5 --device cpu)
    # A grid and a time-to-gain at toy sizes through the same commands: a small corpus, short sequences.
    TOY=(--set "data.sources=[wikipedia]" --set data.seq_len=32 --set train.validation_sequences=16
        --set probe.max_length=32 --set probe.folds=2 --set probe.quick_folds=2 --set probe.max_iter=100)
    COMPARE=(--seeds 2 --set train.budget_tokens=2048 --set probe.quick_rows=200 "${TOY[@]}")
    TIME_TO_GAIN=(--device cpu --points 1,2 --seeds 0 --jobs 1 --probe_rows 200 "${TOY[@]}" --ways "$THREE_WAYS")
else
    step a1 "pytest -m gpu" "" "$PYTHON" "${DETERMINISTIC_PYTEST[@]}" -q -rA -m gpu tests
    step a2 "kernel and compile tests on CUDA" "" "$PYTHON" "${DETERMINISTIC_PYTEST[@]}" -q -rA -m "not gpu" "${KERNEL_TESTS[@]}"
    ATTENTION=()
    TRAIN=()
    THROUGHPUT=(--seconds 15)
    CURVE=(--quick --budget_seconds 120)
    COMPARE=(--seeds 3 --set train.budget_tokens=2000000)
    TIME_TO_GAIN=(--device cuda --points 10,20,40 --seeds 0 --jobs 3 --ways "$THREE_WAYS")
fi
step b1 "attention kernels, bidirectional" "$WORK/attention.md" \
    "$PYTHON" bench/attention.py "${ATTENTION[@]}" --markdown "$WORK/attention.md"
step b2 "attention kernels, causal" "$WORK/attention-causal.md" \
    "$PYTHON" bench/attention.py "${ATTENTION[@]}" --causal --markdown "$WORK/attention-causal.md"
step c "training step against Hugging Face" "$WORK/train.md" \
    "$PYTHON" -m bench.train "${TRAIN[@]}" --markdown "$WORK/train.md"
step d "trials per hour, 1/2/4 workers" "$WORK/trials/trial_throughput.md" \
    "$PYTHON" -m bench.trial_throughput "${THROUGHPUT[@]}" --output "$WORK/trials"
if [[ -f bench/learning_curve.py ]]; then
    step e "learning curve" "$WORK/learning_curve/learning_curve.md" \
        "$PYTHON" -m bench.learning_curve "${CURVE[@]}" --output "$WORK/learning_curve"
else
    STATUS_LINES+=("| e | learning curve | skipped: no bench/learning_curve.py | 0 |")
    write_summary
fi

step f "attention kinds x objectives, 3 seeds (main.py compare; its printed table)" "" \
    "$PYTHON" main.py compare --study_name kinds --storage "sqlite:///$WORK/kinds.db" \
    --grid model.attention_kind=standard,rope,exposb,absolute --grid train.objective=mlm,clm --n_jobs 4 "${COMPARE[@]}"
step g "seconds to a gain: ours against Hugging Face" "$WORK/time_to_gain/time_to_gain.md" \
    "$PYTHON" -m bench.time_to_gain "${TIME_TO_GAIN[@]}" --work "$WORK/time_to_gain/runs" --output "$WORK/time_to_gain"

echo "summary: $RESULTS/summary.md; everything: $RESULTS/gpu_check.tar.gz"
if ((REHEARSE && FAILED)); then
    echo "rehearsal failed: see the steps above and $RESULTS/summary.md" >&2
    exit 1
fi
exit "$FAILED"
