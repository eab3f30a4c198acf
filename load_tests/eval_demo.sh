#!/usr/bin/env bash
# rerank-eval against the offline demo (deployments/demo.yaml: RANDOM-INITIALISED weights, so
# the quality figures are meaningless; latency, throughput and cost are real) on a synthetic
# collection (load_tests/synthetic_trec.py). Starts the demo on its own local Ray instance on
# loopback and stops it (only it) on exit. Run under the machine's CPU lock:
#   flock /tmp/cpu.lock load_tests/eval_demo.sh [OUT_DIR]      (default docs/eval)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/eval}
PORT=${PORT:-8137}
QUERIES=${QUERIES:-20}
WORK=$(mktemp -d)
mkdir -p "$OUT"
.venv/bin/python -m load_tests.synthetic_trec --out "$WORK/data" --queries "$QUERIES" --depth 100
.venv/bin/python load_tests/run_demo_app.py --port "$PORT" >"$WORK/demo.log" 2>&1 &
DEMO=$!
trap 'kill -TERM $DEMO 2>/dev/null; wait $DEMO || true' EXIT
deadline=$((SECONDS + 300))
until grep -q '^ready:' "$WORK/demo.log"; do
  kill -0 "$DEMO" || { cat "$WORK/demo.log"; exit 1; }
  ((SECONDS < deadline)) || { echo "demo not ready after 300 s" >&2; exit 1; }
  sleep 2
done
set -x
.venv/bin/rerank-eval --base-url "http://127.0.0.1:$PORT" \
  --qrels "$WORK/data/qrels.txt" --run "$WORK/data/run.trec" \
  --queries "$WORK/data/queries.tsv" --collection "$WORK/data/collection.tsv" --depth 100 \
  --systems first-stage cross-encoder/ms-marco-TinyBERT-L2-v2 \
    cross-encoder/ms-marco-MiniLM-L6-v2 cross-encoder/ms-marco-MiniLM-L12-v2 \
    cascade auto:max_latency_ms=1000 \
  --concurrency 2 --no-progress --run-out "$WORK/runs" \
  --out "$OUT/demo-report.json" --plot "$OUT/demo-quality-vs-latency.png" \
  --plot-title "demo, RANDOM weights: quality meaningless, latency real" \
  | tee "$OUT/demo-table.txt"
