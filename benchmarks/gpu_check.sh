#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine with this repository, one command that installs what the
# benchmarks need, makes the scenes and prints, within about 8 minutes:
#   - the models alone (TinyCD and ChangerEx MiT-b0, fp16 autocast, batch 16);
#   - each model's whole run at SIZE² (default 8192²) and its marginal rate from MARGINAL² (4096²),
#     and the ratio of the whole run to the model alone (the goal on a GPU: >= 0.6);
#   - the GPUs' utilisation during the whole runs (nvidia-smi) and the model actor's phase seconds;
#   - the data path with a null model: its marginal rate, its CPU per megapixel by process role
#     and the ratio to the raw decode's CPU per megapixel.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the repository root
#   SIZE=2048 MARGINAL=1024 bash benchmarks/gpu_check.sh   # a small check on a CPU-only machine
#
# Settings (environment): PYTHON (an interpreter with the project installed: skips the install), SIZE, MARGINAL, MODELS (default tinycd,changer-mit-b0), BATCH (16),
# DATA (the shared data folder holding levir-cd-1024/geotiff; default ../shared/data, else
# .gpu-check/data), WHEELS (a folder of wheels to install from, for a machine without an index),
# OUT (where the log goes; default /tmp/changemap-gpu-check), LIMIT (seconds, default 470).
# A machine that cannot reach ../shared: first run `bash benchmarks/gpu_check.sh --prepare` here,
# which copies the three LEVIR-CD test pairs the mosaics are made of into .gpu-check/data (ignored
# by git; research-only imagery stays out of the repository), and send that folder along.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .gpu-check/data/levir-cd-1024/geotiff
    cp ../shared/data/levir-cd-1024/geotiff/test_[123]_[AB].tif .gpu-check/data/levir-cd-1024/geotiff/
    echo "copied the LEVIR-CD test pairs to .gpu-check/data; carry .gpu-check to the GPU machine"
    exit 0
fi

SIZE=${SIZE:-8192}
MARGINAL=${MARGINAL:-4096}
MODELS=${MODELS:-tinycd,changer-mit-b0}
BATCH=${BATCH:-16}
LIMIT=${LIMIT:-470}
OUT=${OUT:-/tmp/changemap-gpu-check}
if [[ -z "${DATA:-}" ]]; then
    DATA=../shared/data
    [[ -d "$DATA/levir-cd-1024/geotiff" ]] || DATA=.gpu-check/data
fi
[[ -d "$DATA/levir-cd-1024/geotiff" ]] || {
    echo "no LEVIR-CD pairs under $DATA/levir-cd-1024/geotiff: set DATA, or run 'bash benchmarks/gpu_check.sh --prepare' where ../shared/data is" >&2
    exit 2
}
mkdir -p "$OUT"

# The project into a virtual environment that sees the machine's own PyTorch (a GPU build):
# everything else at the versions of constraints.txt, torch left as it is.
PY=${PYTHON:-.venv-gpu/bin/python}  # PYTHON: an interpreter that has the project already (nothing installed)
if [[ ! -x "$PY" ]] || ! "$PY" -c "import pipeline, ray, prefect, rasterio, zarr, torch" 2>/dev/null; then
    PY=.venv-gpu/bin/python
    python3 -m venv --system-site-packages .venv-gpu
    grep -v '^torch' constraints.txt > "$OUT/constraints-gpu.txt"
    if [[ -n "${WHEELS:-}" ]]; then
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" -c "$OUT/constraints-gpu.txt" -e . 2>&1 | tail -20
    else
        "$PY" -m pip install -q -c "$OUT/constraints-gpu.txt" -e . 2>&1 | tail -20
    fi
fi
"$PY" - <<'EOF'
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (the check runs on the CPU)"
print(f"torch {torch.__version__}, GPU: {gpu}, CPUs: {__import__('os').cpu_count()}", flush=True)
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# One invocation: the models alone, their whole runs at both sizes, the null model's data path
# (CPU per MP by role against the raw decode's), memory sampled once per size.
export PYTHONUNBUFFERED=1 PREFECT_LOGGING_LEVEL=WARNING
timeout "$LIMIT" "$PY" -m benchmarks.throughput --size "$SIZE" --marginal "$MARGINAL" --model "$MODELS" \
    --batch "$BATCH" --whole-marginal --memory-runs 1 --data "$DATA" --workdir "$OUT/work" 2>&1 | tee "$OUT/gpu_check.log"
