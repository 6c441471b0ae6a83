#!/bin/bash
# Call 1: unpack the first chunk; the eager speed variants of the published network (no compiling).
source benchmarks/gpu_session/common.sh
unpack c1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 benchmarks/gpu_round2.py $DRY_RUN --out "$OUT/round2" --steps 20 --skip-compile 2>&1 | cut -c1-160 | tail -n 12
