#!/usr/bin/env bash
# The GPU check: a ~0.5B random Llama pair on one CUDA GPU in bf16 -- a 5-ratio sweep evaluated in
# memory, SFT for 20 steps, 16 generations -- printing tokens/s (evaluation, generation), samples/s
# (SFT) and peak GPU memory. Refuses (exit 2) without CUDA; `--device cpu --tiny` runs the same
# phases on a tiny model on a CPU, `--dry-run` only builds the models. With 2 or more GPUs visible, the
# sweep is evaluated again on 2 local workers, one GPU each (`--workers N` to choose; medmerge.runtime.workers).
# See scripts/gpu_check.py.
#   scripts/gpu_check.sh [--out DIR] [--steps 20] [--generations 16] [--workers N] [--device cpu --tiny] [--dry-run]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"

exec "$python" "$root/scripts/gpu_check.py" "$@"
