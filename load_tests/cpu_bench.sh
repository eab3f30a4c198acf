#!/usr/bin/env bash
# The CPU measurements behind docs/PERFORMANCE.md: MiniLM-L6 on a 2-core machine, no GPU.
# In-process sentence-transformers vs our engine, then the same requests through HTTP.
#   load_tests/cpu_bench.sh results/
#   CONFIG=deployments/bench-cpu-l6-one-replica.yaml load_tests/cpu_bench.sh results/  # variant
set -uo pipefail
out=${1:-results}; mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
config=${CONFIG:-deployments/bench-cpu-l6.yaml}
L6=cross-encoder/ms-marco-MiniLM-L6-v2
$py -m load_tests.bench engine --models $L6 --requests 10 --threads 2 --batch-docs 32 \
  --batch-tokens 8192 --st-batch 32 --out "$out/engine-cpu.json" || exit 1
port=8311
$py load_tests/run_demo_app.py --config "$config" --port $port \
  > "$out/serve-cpu.log" 2>&1 &
pid=$!
for _ in $(seq 150); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 2; done
$py -m load_tests.bench http --url http://127.0.0.1:$port --model $L6 --concurrency 1 2 4 8 \
  --duration 30 --idle-requests 5 --client-procs 1 --out "$out/http-cpu-l6.json"
kill -TERM $pid; wait $pid
