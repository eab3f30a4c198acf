#!/usr/bin/env bash
# The GPU measurements behind docs/PERFORMANCE.md, on a host with one NVIDIA GPU where
# ray isn't installed: wheels from ../shared/gpu/make-wheelhouse.sh sit in .whl/.
#   load_tests/gpu_bench.sh gpu   OUT_DIR   # engine (5 models) + HTTP sweep for L6 on the GPU
#   load_tests/gpu_bench.sh cpu2  OUT_DIR   # the same L6 comparisons pinned to 2 cores, GPU hidden
set -uo pipefail
phase=$1; out=$2; mkdir -p "$out"
if ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=.:/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1 RERANK_RANDOM_CHECKPOINTS=/tmp/ckpt
MODELS=(cross-encoder/ms-marco-TinyBERT-L2-v2 cross-encoder/ms-marco-MiniLM-L2-v2
        cross-encoder/ms-marco-MiniLM-L4-v2 cross-encoder/ms-marco-MiniLM-L6-v2
        cross-encoder/ms-marco-MiniLM-L12-v2)
L6=cross-encoder/ms-marco-MiniLM-L6-v2
python3 -m serve_app.checkpoints --out /tmp/ckpt

serve_up() {  # $1: config, $2: cpu list for taskset or ""
  if [ -n "$2" ]; then taskset -c "$2" serve run "$1" > "$out/serve-$phase.log" 2>&1 &
  else serve run "$1" > "$out/serve-$phase.log" 2>&1 & fi
  SERVE_PID=$!
  for _ in $(seq 150); do curl -sf localhost:8000/readyz >/dev/null && return 0; sleep 2; done
  tail -50 "$out/serve-$phase.log"; return 1
}
serve_down() { kill -INT "$SERVE_PID"; wait "$SERVE_PID"; }

case $phase in
gpu)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -m load_tests.bench engine --models "${MODELS[@]}" --requests 100 --st-batch 256 \
    --batch-docs 512 --batch-tokens 65536 --out "$out/engine-gpu.json"
  serve_up deployments/bench-gpu-l6.yaml "" || exit 1
  python3 -m load_tests.bench http --model $L6 --concurrency 1 8 32 64 128 --rate-fractions 0.7 \
    --duration 10 --client-procs 4 --out "$out/http-gpu-l6.json"
  python3 -m load_tests.bench http --model $L6 --shape long --concurrency 8 32 64 \
    --duration 10 --idle-requests 10 --client-procs 4 --out "$out/http-gpu-l6-long.json"
  serve_down
  ;;
cpu2)
  export CUDA_VISIBLE_DEVICES=
  taskset -c 0,1 python3 -m load_tests.bench engine --models $L6 --requests 10 --threads 2 \
    --st-batch 32 --batch-docs 32 --batch-tokens 8192 --out "$out/engine-cpu2.json"
  serve_up deployments/bench-cpu-l6.yaml 0,1 || exit 1
  taskset -c 2-7 python3 -m load_tests.bench http --model $L6 --concurrency 1 2 4 8 \
    --duration 20 --idle-requests 5 --client-procs 1 --out "$out/http-cpu2-l6.json"
  serve_down
  ;;
esac
