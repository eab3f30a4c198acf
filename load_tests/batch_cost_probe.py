"""What one forward pass costs: times padded batches of several shapes and fits
`seconds = per_token * rows * length + per_pass`, then prints the fixed cost in padded
tokens, the figure `batching.batch_overhead_tokens` wants.

    python load_tests/batch_cost_probe.py [--model NAME] [--threads 1] [--dtype auto]
        [--device cpu|cuda] [--backend torch|onnx|openvino]

Each batch is padded as production's are: rows from 3/4 of the width to the full width,
so the masked attention path is what gets timed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from serve_app.catalog import load_catalog
from serve_app.model.checkpoints import write_random_checkpoint
from serve_app.model.engine import CrossEncoderEngine

SHAPES = [
    (1, 32),
    (1, 64),
    (1, 128),
    (4, 64),
    (16, 64),
    (32, 64),
    (4, 128),
    (16, 128),
    (32, 128),
    (8, 256),
    (64, 32),
    (128, 32),
]
GPU_SHAPES = SHAPES + [(256, 64), (512, 64), (256, 128), (128, 256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cross-encoder/ms-marco-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument(
        "--checkpoints", default=os.path.expanduser("~/.cache/rerank-serve/random-init")
    )
    args = parser.parse_args()
    card = load_catalog().resolve(args.model)
    source = str(write_random_checkpoint(card, os.path.join(args.checkpoints, card.short_name)))
    engine = CrossEncoderEngine(
        source, backend=args.backend, device=args.device, dtype=args.dtype, cpu_threads=args.threads
    )
    backend = engine.backend
    on_gpu = args.device == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    timed = []
    for rows, length in GPU_SHAPES if on_gpu else SHAPES:
        ids = np.full((rows, length), 1996, dtype=np.int64)
        # Padded like production batches: row lengths spread over the top quarter.
        lengths = np.linspace(length, length * 3 // 4, rows).astype(np.int64)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
        heads = np.full(rows, 8)
        backend.collect([backend.launch(ids, lengths, heads)])  # warm: allocator, kernels
        repeats = max(3, (200_000 if on_gpu else 20_000) // (rows * length))
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            backend.launch(ids, lengths, heads)
        sync()
        seconds = (time.perf_counter() - start) / repeats
        timed.append((rows * length, seconds))
        print(f"{rows:4d} x {length:3d}: {seconds * 1e3:8.2f} ms", flush=True)
    # Fit relative errors, so the long passes do not drown the short ones' fixed cost.
    weight = np.array([1 / seconds for _, seconds in timed])
    design = np.array([[tokens, 1.0] for tokens, _ in timed]) * weight[:, None]
    per_token, per_pass = np.linalg.lstsq(design, np.ones(len(timed)), rcond=None)[0]
    print(
        f"{args.model} on {engine.describe()} (threads={args.threads}): "
        f"{per_token * 1e6:.3f} us per padded token, {per_pass * 1e3:.2f} ms per pass "
        f"= {per_pass / per_token:.0f} padded tokens per pass"
    )


if __name__ == "__main__":
    main()
