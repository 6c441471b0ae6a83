#!/bin/bash
# Call 2: unpack the second chunk.
source benchmarks/gpu_session/common.sh
unpack c2
echo "training cases so far: $(ls $DATA/train | wc -l)"
