"""Start a Serve config's app (default: deployments/demo.yaml) on its own local Ray
instance, on loopback, for load tests; Ctrl-C (or SIGTERM) shuts down only what this
started, unlike `serve run`, whose Ray instance can outlive it.

    python load_tests/run_demo_app.py [--config FILE] [--port 8123] [--models TinyBERT-L2 ...]
        [--backend torch|onnx|openvino] [--quantization int8]
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

import httpx
import ray
import yaml
from ray import serve

from serve_app.runtime.builder import build_app
from serve_app.runtime.ray_env import with_service_env

DEMO = Path(__file__).resolve().parent.parent / "deployments" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO, help="a Serve config file")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--num-cpus", type=int, default=8, help="logical CPUs for Ray")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        help="logical GPUs for Ray (default: the GPUs Ray detects)",
    )
    parser.add_argument("--models", nargs="*", help="substrings of model names to keep")
    parser.add_argument(
        "--model", help="serve this catalog model in place of a one-model config's model"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "openvino"],
        help="override every model's backend (e.g. torch against onnx, one config)",
    )
    parser.add_argument("--quantization", choices=["none", "int8"])
    parser.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="let GPU-share replicas run on CPU when there is no CUDA (smoke runs)",
    )
    args = parser.parse_args()

    serve_config = yaml.safe_load(args.config.read_text())
    app_spec = serve_config["applications"][0]
    app_args = app_spec["args"]
    if args.models:
        app_args["models"] = [
            m
            for m in app_args["models"]
            if any(s.lower() in m["name"].lower() for s in args.models)
        ]
        names = [m["name"] for m in app_args["models"]]
        if app_args.get("default_model") not in (None, *names):
            app_args["default_model"] = names[0]
    if args.model:
        (only,) = app_args["models"]
        only["name"] = args.model
        app_args.pop("default_model", None)
    if args.allow_cpu_fallback:
        for m in app_args["models"]:
            m["allow_cpu_fallback"] = True
    for override in ("backend", "quantization"):
        if getattr(args, override):
            for m in app_args["models"]:
                m[override] = getattr(args, override)

    with_service_env()  # before Ray starts: its workers read it
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.port},
            logging_config=serve_config.get("logging_config"),
        )
        serve.run(
            build_app(app_args),
            name="rerank",
            route_prefix="/",
            blocking=False,
            logging_config=app_spec.get("logging_config"),
        )
        url = f"http://127.0.0.1:{args.port}"
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            time.sleep(1)
        print(f"ready: {url}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
