#!/usr/bin/env bash
# Where a served request's CPU goes: py-spy samples the model replicas and the ingress
# while `bench http` drives the service (collapsed stacks, one file per process, plus a
# summary of the hottest frames).
#   load_tests/profile_http.sh OUT [MODEL] [BACKEND]     (needs `pip install py-spy`)
set -uo pipefail
out=${1:-results/profile}; mkdir -p "$out"
model=${2:-cross-encoder/ms-marco-MiniLM-L6-v2}; backend=${3:-onnx}
py=${PYTHON:-.venv/bin/python}; spy=${PYSPY:-.venv/bin/py-spy}; port=${BENCH_PORT:-8313}
$py load_tests/run_demo_app.py --config deployments/bench-cpu-l6.yaml --model "$model" \
  --backend "$backend" --port $port > "$out/serve.log" 2>&1 &
pid=$!
for _ in $(seq 150); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 2; done
$py -m load_tests.bench http --url http://127.0.0.1:$port --model "$model" --concurrency 4 \
  --duration 40 --idle-requests 0 --client-procs 1 --out "$out/http.json" > "$out/bench.log" 2>&1 &
bench=$!
sleep 8  # past the bench's start-up: sample the steady state
spies=()
for p in $(pgrep -f "ServeReplica:rerank:" ); do
  name=$(tr '\0' ' ' < /proc/$p/cmdline | grep -o 'ServeReplica:rerank:[A-Za-z0-9_.-]*' | head -1)
  $spy record --pid "$p" --duration 20 --rate 50 --format raw --nonblocking \
    --output "$out/$name-$p.txt" > /dev/null 2>&1 &
  spies+=($!)
done
wait "${spies[@]}" $bench
kill -TERM $pid; wait $pid
for f in "$out"/ServeReplica*.txt; do
  echo "== $f"; $py - "$f" <<'PY'
import collections, sys
self_time, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    total += int(n)
    self_time[frames[-1]] += int(n)
for frame, n in self_time.most_common(8):
    print(f"{100 * n / total:5.1f}%  {frame[:120]}")
PY
done
