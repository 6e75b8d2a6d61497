#!/usr/bin/env bash
# Every GPU check of the project in one run that fits a lent device's budget (at most 10 minutes on one H200):
# the CUDA-graph test (tests/test_graphs.py: capture, replays, weights against the eager static step), the seed
# preset against the pytorch/examples loop, every preset's epoch time and samples per second in fp32 and bf16
# (medians leave out the first epoch, which holds the graph capture; it is reported apart), and one quality run
# with its K = 5000 evaluation time.
#
# Here, before the call (runs/ is git-ignored):   mkdir -p runs/data && cp -r ../shared/data/mnist runs/data/
# The call:   bash benchmarks/gpu_checks.sh     with carry ["runs/data"]; results land in $OUT (or runs/gpu).
# Where vaekit is not installed it runs from src/ (torch, numpy, safetensors, tqdm, matplotlib, scikit-learn and
# pytest needed).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} VAEKIT_DATA=${VAEKIT_DATA:-runs/data} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log() { echo "== $* ($(date +%T))"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
log "CUDA-graph test"
timeout 90 $PY -m pytest -q -p no:cacheprovider -p no:randomly tests/test_graphs.py 2>&1 | tail -15 | tee "$OUT/test_graphs.txt"
log "seed against the reference, batch 128, then 1024"
timeout 150 $PY benchmarks/speed.py --device cuda --epochs 4 --json "$OUT/speed_seed_128.json" | tail -8
timeout 60 $PY benchmarks/speed.py --device cuda --epochs 4 --batch-size 1024 --precision fp32 \
    --json "$OUT/speed_seed_1024.json" | tail -5
log "presets, fp32 and bf16"
timeout 170 $PY benchmarks/speed.py --device cuda --presets seed,iwae,conv,vamp,iaf,hvae,hvae-conv,hvae-spatial \
    --epochs 3 --precision fp32,bf16 --json "$OUT/speed_presets.json" | tail -20
log "quality: hvae for half a minute, all 10,000 test images, K = 5000"
timeout 110 $PY benchmarks/quality.py --preset hvae --minutes 0.5 --epochs 100000 --device cuda \
    --results "$OUT/quality.jsonl" | tail -4
log done
