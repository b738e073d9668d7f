#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA-only tests, 200 outer steps of the paper
# preset with timings, protect throughput; one JSON in results/gpu_check.json.
# Uses the Python that already has a CUDA build of PyTorch (PYTHON, default python3) and
# puts this checkout first on its path, so nothing is installed or downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 480 "$PYTHON" benchmarks/gpu_check.py --output "${1:-results/gpu_check.json}"
