#!/usr/bin/env bash
# Seconds from process start to the first /readyz 200 for a Serve config on a local Ray
# instance (load_tests/run_demo_app.py), first with empty checkpoint and export caches
# ("cold": random checkpoints written, ONNX exports built), then again with them filled
# ("warm"). Stops only the server it started.
#   load_tests/cold_start.sh [CONFIG] [CACHE_DIR] [PORT]
set -u
config=${1:-deployments/demo.yaml}
cache=${2:-$(mktemp -d)}
port=${3:-8771}
py=${PYTHON:-.venv/bin/python}
export RERANK_RANDOM_CHECKPOINTS=$cache/checkpoints RERANK_EXPORT_CACHE=$cache/exports
for run in cold warm; do
  log=$cache/$run.log
  start=$(date +%s.%N)
  $py load_tests/run_demo_app.py --config "$config" --port "$port" >"$log" 2>&1 &
  pid=$!
  until grep -q '^ready:' "$log" || ! kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  end=$(date +%s.%N)
  if grep -q '^ready:' "$log"; then
    printf '%s: ready after %.1f s (load average %s)\n' "$run" \
      "$(echo "$end - $start" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
  else
    echo "$run: the server exited before it was ready; see $log"
  fi
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
done
