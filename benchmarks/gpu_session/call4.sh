#!/bin/bash
# Call 4, in the device time left ($1 seconds): torch.compile (default mode, bf16), whole cases end to
# end with random full-size weights up to the published 1000 DDPM steps, then the fp32 compile.
source benchmarks/gpu_session/common.sh
BUDGET=${1:-150}
CASE=/tmp/e2e/BraTS-GLI-99909-000
python3 benchmarks/gpu_round2.py $DRY_RUN --out "$OUT/round2" --case $CASE --steps 20 --skip-variants \
    --timeout-s $(( BUDGET / 2 )) --deadline-s $(( BUDGET - 100 )) 2>&1 | cut -c1-200 | tail -n 12
