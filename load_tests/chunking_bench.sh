#!/usr/bin/env bash
# Long documents chunked against truncated (docs/PERFORMANCE.md, "Long documents"): two
# single-threaded MiniLM-L6 replicas on ONNX Runtime (deployments/bench-cpu-l6.yaml), the
# `longer` workload (documents of about 1,500 tokens, past the 512-token window), the same
# requests sent with `"long_documents": "chunk"` and then `"truncate"`; docs/s with 2
# clients, and windows per document from the responses' usage.
#   load_tests/chunking_bench.sh results/chunking
set -uo pipefail
out=${1:-results/chunking}; mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
model=${MODEL:-cross-encoder/ms-marco-MiniLM-L6-v2}
port=${BENCH_PORT:-8313}
$py load_tests/run_demo_app.py --config deployments/bench-cpu-l6.yaml \
  --model "$model" --backend onnx --port $port > "$out/serve.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' EXIT
for _ in $(seq 150); do
  curl -sf localhost:$port/readyz >/dev/null && break
  kill -0 $pid 2>/dev/null || { tail -20 "$out/serve.log"; exit 1; }
  sleep 2
done
failed=0
for mode in chunk truncate; do
  $py -m load_tests.bench http --url http://127.0.0.1:$port --model "$model" --shape longer \
    --docs "${DOCS:-20}" --long-documents $mode --concurrency ${CONCURRENCY:-2} \
    --duration "${DURATION:-40}" --idle-requests "${IDLE:-10}" --client-procs 1 \
    --out "$out/http-longer-$mode.json" || failed=1
done
exit $failed
