#!/usr/bin/env bash
# Backends on a 2-core CPU (docs/PERFORMANCE.md, "Inference backends"): for each model,
# in-process docs/s of every backend against CrossEncoder.predict (torch fp32) in the same
# run, then the same requests through HTTP (two single-threaded replicas, 4 clients) once
# per backend. Needs `pip install -e '.[test,int8]'` (sentence-transformers for `predict`,
# NNCF for openvino:int8; drop it from ENGINE_BACKENDS without the extra).
#   load_tests/backend_bench.sh results/backends                       # TinyBERT-L2, L6, L12
#   MODELS="cross-encoder/ms-marco-MiniLM-L6-v2" SHAPE=long REQUESTS=4 \
#     load_tests/backend_bench.sh results/backends-long
#   python -m load_tests.backend_report results/backends --plot docs/bench/backends.png
set -uo pipefail
out=${1:-results/backends}; mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
shape=${SHAPE:-standard}
read -r -a models <<< "${MODELS:-cross-encoder/ms-marco-TinyBERT-L2-v2 cross-encoder/ms-marco-MiniLM-L6-v2 cross-encoder/ms-marco-MiniLM-L12-v2}"
read -r -a engine_backends <<< "${ENGINE_BACKENDS:-torch onnx openvino onnx:int8 openvino:int8}"
read -r -a http_backends <<< "${HTTP_BACKENDS:-torch onnx openvino onnx:int8}"
port=${BENCH_PORT:-8312}
failed=0
for model in "${models[@]}"; do
  short=${model##*/}
  [ "${SKIP_ENGINE:-0}" = 1 ] || $py -m load_tests.bench engine --models "$model" \
    --requests "${REQUESTS:-10}" --shape "$shape" --threads 2 --batch-docs 32 \
    --batch-tokens 8192 --st-batch 32 --backends "${engine_backends[@]}" \
    --out "$out/engine-$short-$shape.json" || failed=1
  for spec in "${http_backends[@]}"; do
    backend=${spec%%:*}; quant=$([ "$spec" = "$backend" ] && echo none || echo "${spec#*:}")
    $py load_tests/run_demo_app.py --config deployments/bench-cpu-l6.yaml --model "$model" \
      --backend "$backend" --quantization "$quant" --port $port \
      > "$out/serve-$short-${spec/:/-}.log" 2>&1 &
    pid=$!
    ready=0
    for _ in $(seq 150); do
      curl -sf localhost:$port/readyz >/dev/null && { ready=1; break; }
      kill -0 $pid 2>/dev/null || break
      sleep 2
    done
    if [ $ready = 1 ]; then
      $py -m load_tests.bench http --url http://127.0.0.1:$port --model "$model" --shape "$shape" \
        --backend "$spec" --concurrency ${CONCURRENCY:-4} --duration "${DURATION:-20}" \
        --idle-requests 3 --client-procs 1 \
        --out "$out/http-$short-${spec/:/-}-$shape.json" || failed=1
    else
      echo "$model on $spec never became ready" >&2; tail -20 "$out/serve-$short-${spec/:/-}.log"
      failed=1
    fi
    kill -TERM $pid 2>/dev/null; wait $pid
  done
done
exit $failed
