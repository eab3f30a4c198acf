#!/usr/bin/env bash
# The CPU measurements behind docs/PERFORMANCE.md: MiniLM-L6 on a 2-core machine, no GPU.
# In-process sentence-transformers vs our engine, then the same requests through HTTP.
#   load_tests/cpu_bench.sh results/
#   CONFIG=deployments/bench-cpu-l6-one-replica.yaml load_tests/cpu_bench.sh results/  # variant
#   SHAPE=long REQUESTS=4 DURATION=60 CONCURRENCY="1 2 4" load_tests/cpu_bench.sh results/
set -uo pipefail
out=${1:-results}; mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
config=${CONFIG:-deployments/bench-cpu-l6.yaml}
shape=${SHAPE:-standard}
suffix=$([ "$shape" = standard ] || echo "-$shape")
L6=cross-encoder/ms-marco-MiniLM-L6-v2
$py -m load_tests.bench engine --models $L6 --requests "${REQUESTS:-10}" --shape "$shape" \
  --threads 2 --batch-docs 32 --batch-tokens 8192 --st-batch 32 \
  --out "$out/engine-cpu$suffix.json" || exit 1
port=${BENCH_PORT:-8311}
$py load_tests/run_demo_app.py --config "$config" --port $port \
  > "$out/serve-cpu$suffix.log" 2>&1 &
pid=$!
for _ in $(seq 150); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 2; done
# shellcheck disable=SC2086  # CONCURRENCY is a list of numbers
$py -m load_tests.bench http --url http://127.0.0.1:$port --model $L6 --shape "$shape" \
  --concurrency ${CONCURRENCY:-1 2 4 8} --duration "${DURATION:-30}" --idle-requests 5 \
  --client-procs 1 --out "$out/http-cpu-l6$suffix.json"
status=$?  # the script's result: not the service's clean shutdown below
kill -TERM $pid; wait $pid
exit $status
