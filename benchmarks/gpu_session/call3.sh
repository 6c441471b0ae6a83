#!/bin/bash
# Call 3: training speed before/after, the four demo models, their errors per precision, the sweep.
# Everything but the weights is packed into $OUT/results.tar.gz (a call returns at most 8 files).
source benchmarks/gpu_session/common.sh
BUDGET=${1:-480}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
R=/tmp/call3
mkdir -p $R "$OUT/weights"
unpack c3
TRAIN=$DATA/train
# The end-to-end case (here and in call 4): a held-out case with its t2f dropped (links to the others).
CASE=/tmp/e2e/BraTS-GLI-99909-000
mkdir -p $CASE
for s in t1n t1c t2w; do ln -sf $DATA/heldout/BraTS-GLI-99909-000/BraTS-GLI-99909-000-$s.nii $CASE/; done
echo "training cases: $(ls $TRAIN | wc -l)"
nvidia-smi --query-gpu=name,memory.total --format=csv > $R/gpu.txt
SPEED="python3 benchmarks/training_speed.py $TRAIN $CROP --precision $PRECISION"
$SPEED --steps 12 --log-every 4 --code .gpu/before --json $R/speed-before.json > $R/speed-before.log 2>&1
$SPEED --steps 40 --log-every 10 --flip --cache-dir /tmp/cache --json $R/speed-after.json > $R/speed-after.log 2>&1
grep -h "steady_steps_per_s\|gpu_utilisation_mean" $R/speed-*.json
# Four targets in the time left, less the sweep's and the packing's share.
PER_TARGET=$(( ( $(left) - 175 ) / 4 ))
[ $PER_TARGET -lt 15 ] && PER_TARGET=15
ITER=$(python3 -c "import json; print(max(50, int(json.load(open('$R/speed-after.json'))['steady_steps_per_s'] * $PER_TARGET * 0.85)))")
echo "training $ITER steps a target ($PER_TARGET s each); $(left) s left"
python3 -m cwdm.cli train $TRAIN /tmp/runs/demo2 --target all --precision $PRECISION $CROP \
    --model-channels 16 --channel-mult 1,2,2,2,2 --num-res-blocks 1 --num-groups 8 \
    --lr 2e-4 --lr-schedule cosine --ema-rate 0.999 --flip --iterations $ITER --save-every $ITER \
    --log-every 25 --sampling-steps 10 --sampler ddim --seed 0 --cache-dir /tmp/cache \
    --max-seconds $(( PER_TARGET + PER_TARGET / 5 )) > $R/train.log 2>&1
tail -n 5 $R/train.log
cp /tmp/runs/demo2/weights/*.safetensors "$OUT/weights/"
python3 benchmarks/gpu_round2.py $DRY_RUN --out $R/round2 --weights /tmp/runs/demo2/weights --case $CASE > $R/errors.log 2>&1
grep -h "trained-weights-error" $R/round2/results.jsonl | cut -c1-200
cat > /tmp/grid.yaml <<YAML
- {sampler: ddpm, sampling_steps: $LONG}
- {sampler: ddim, timestep_spacing: trailing, sampling_steps: 10}
YAML
echo "sweep with $(left) s left"
timeout $(( $(left) - 25 )) python3 -m cwdm.cli sweep $DATA/heldout /tmp/sweep --weights /tmp/runs/demo2/weights \
    --grid /tmp/grid.yaml --device $DEVICE --workers 12 --title "demo weights v2, H200" > $R/sweep.log 2>&1
tail -n 3 $R/sweep.log
cp /tmp/runs/demo2/weights/model.yaml $R/ 2>/dev/null
for t in t1n t1c t2w t2f; do cp /tmp/runs/demo2/$t/train_log.csv $R/train_log_$t.csv 2>/dev/null; done
cp /tmp/sweep/sweep.csv /tmp/sweep/sweep.md $R/ 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C /tmp call3
ls -la "$OUT" "$OUT/weights"; echo "done with $(left) s left"
