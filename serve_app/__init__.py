"""rerank-serve: a multi-model cross-encoder rerank service on Ray Serve.

Layers, each importing only those below it (checked by import-linter, see pyproject.toml):

    runtime/   Ray Serve: deployments, clients for them, metrics export, the builder
    api/       HTTP: routes, edge middleware, wire schemas, the error -> status table
    service/   the rerank pipeline: limits, auth, quotas, truncation, billing
    routing/   which model scores a request: names, budget, cascade, splits, shadow, ranking
    model/     the cross-encoder: checkpoints, tokenization, packing, engine
    config, catalog, types, errors, observer   shared by all: data and interfaces
"""

__version__ = "0.1.0"
