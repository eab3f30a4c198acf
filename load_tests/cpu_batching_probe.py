"""Where CPU time goes between the in-process and the served engine: one call per request
against one call for all requests, and the calling thread vs an executor thread (as in the
replica). Prints documents per second for each.

    python load_tests/cpu_batching_probe.py [--threads 2] [--requests 6] [--batch-overhead 64]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from load_tests.workload import make_requests
from serve_app.batching import PackingLimits
from serve_app.catalog import load_catalog
from serve_app.checkpoints import write_random_checkpoint
from serve_app.engine import CrossEncoderEngine
from serve_app.tokenization import PairEncoder

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--batch-overhead", type=int, default=PackingLimits.batch_overhead_tokens)
    parser.add_argument("--checkpoints", default=os.path.expanduser("~/.cache/rerank-serve/random-init"))
    args = parser.parse_args()
    card = load_catalog().resolve(L6)
    source = str(write_random_checkpoint(card, os.path.join(args.checkpoints, card.short_name)))
    encoder = PairEncoder.from_pretrained(source, 64)
    engine = CrossEncoderEngine(source, cpu_threads=args.threads)
    requests = [encoder.encode(r.query, r.documents) for r in make_requests(args.requests, 100, seed=1)]
    docs = sum(len(r) for r in requests)
    limits = PackingLimits(8192, 32, args.batch_overhead)

    def per_request() -> float:
        start = time.perf_counter()
        for r in requests:
            engine.score([r], limits)
        return docs / (time.perf_counter() - start)

    def all_at_once() -> float:
        start = time.perf_counter()
        engine.score(requests, limits)
        return docs / (time.perf_counter() - start)

    pool = ThreadPoolExecutor(1, initializer=engine.use_this_thread)
    print(f"threads={args.threads} docs={docs}")
    print(f"calling thread:  per request {per_request():.0f} docs/s, all at once {all_at_once():.0f}")
    print(f"executor thread: per request {pool.submit(per_request).result():.0f} docs/s, "
          f"all at once {pool.submit(all_at_once).result():.0f}")


if __name__ == "__main__":
    main()
