#!/usr/bin/env bash
# The GPU check of issue 20, in one go (under 8 minutes), from the repository root on a machine
# with a CUDA GPU:
#
#     bash tools/gpu_check.sh            # or BUDGET_S=420 bash tools/gpu_check.sh
#
# 1. uses the installed torch and Triton (never reinstalls them); pip-installs only the test
#    and bench dependencies that are missing; runs hmfusion from src/ (no install needed);
# 2. the CUDA tests: tests/test_triton.py with every marker (the interpreter tests, the kernels
#    on the GPU through the module, torch.compile, a CUDA graph, reduce-overhead);
# 3. hmfusion bench --device cuda --quick (no competing load);
# 4. tools/gpu_plans.py --quick: forced triton / composite / materialize / planner against dense,
#    eagerly and under CUDA graphs;
# 5. the full bench grid and the full plans grid, if the budget has time left.
# Everything goes to benchmarks/gpu-<name>/ (name from the GPU, e.g. h100), with each step's
# log, and is copied to $OUT when it is set (the device runner returns only that folder); a step
# that fails or runs out of time is reported and the next one still runs. Through the device
# runner: `run(command="bash tools/gpu_check.sh", timeout_s=560)`.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-460}
started=$SECONDS
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

left() { echo $((BUDGET_S - (SECONDS - started))); }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -gt "$(left)" ]; then limit=$(left); fi
    if [ "$limit" -lt 20 ]; then
        echo "gpu_check: $name skipped (budget spent)" | tee -a "$out/summary.txt"
        return 0
    fi
    echo "gpu_check: $name (limit ${limit}s)"
    local begin=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "gpu_check: $name exit $status after $((SECONDS - begin))s" | tee -a "$out/summary.txt"
    tail -n 5 "$out/$name.log"
    # the device runner returns only what is under $OUT: keep a copy there after every step
    if [ -n "${OUT:-}" ]; then cp -r "$out" "$OUT/"; fi
}

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device" >&2
    exit 2
fi
name=$($PY - <<'PY'
import re, torch
full = torch.cuda.get_device_name().lower().replace("nvidia", "")
found = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", full)
print(found.group(1) if found else re.sub(r"[^a-z0-9]+", "-", full).strip("-"))
PY
)
out="benchmarks/gpu-$name"
mkdir -p "$out"
: >"$out/summary.txt"
echo "gpu_check: results in $out"

# 1. what is missing, and only that (torch and Triton come with the machine's CUDA torch)
missing=$($PY - <<'PY'
import importlib.util
wanted = {"pytest": "pytest", "pytest_timeout": "pytest-timeout", "hypothesis": "hypothesis",
          "yaml": "pyyaml", "numpy": "numpy",
          "tqdm": "tqdm", "matplotlib": "matplotlib", "triton": "triton"}
print(" ".join(pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
    echo "gpu_check: pip install $missing"
    # shellcheck disable=SC2086
    timeout 60 $PY -m pip install -q --retries 0 --timeout 10 $missing ||
        echo "gpu_check: pip install failed (no network?): carry wheels" >&2
fi
$PY - <<'PY' | tee "$out/environment.txt"
import platform, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "missing"
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, triton {triton_version}, Python {platform.python_version()}")
PY

# 2. the tests (the kernels compile here for the first time: Triton's JIT, cached on disk)
# (--noconftest: these tests need none of conftest.py's fixtures, nor hypothesis)
# (measuring off and a private wisdom folder, as conftest.py sets them for the suite: the
# plan tests check the cost model's ranking, and nothing is written to ~/.cache/hmfusion)
HMFUSION_TUNE=0 HMFUSION_WISDOM_DIR=$(mktemp -d) \
    step tests 180 $PY -m pytest -q -m "" -p no:cacheprovider --noconftest tests/test_triton.py
# 3. the bench's quick grid (its hmfusion case runs the planner's pick: the Triton kernels
#    where the cost model ranks them first)
step bench-quick 200 $PY -m hmfusion bench --device cuda --quick --load 0 --quiet \
    --overwrite --out "$out/quick"
# 4. forced plans and CUDA graphs, quick grid
step plans-quick 90 $PY tools/gpu_plans.py --quick --repeats 5 --out "$out/plans-quick"
# 5. the full grids while time is left (the bench writes nothing if cut short; plans do)
step plans-full 240 $PY tools/gpu_plans.py --repeats 5 --out "$out/plans-full"
step bench-full 600 $PY -m hmfusion bench --device cuda --load 0 --quiet --repeats 3 \
    --modes forward+backward --overwrite --out "$out/full"
echo "gpu_check: done in $((SECONDS - started))s; summary:"
cat "$out/summary.txt"
if [ -n "${OUT:-}" ]; then cp -r "$out" "$OUT/"; fi
