"""`rerank-eval`: quality next to latency and cost, measured through the HTTP API of any
running instance of the service, on TREC-format test collections.

An HTTP client only: it imports nothing from the server's layers (runtime, api, service,
routing, model), which an import-linter contract in `pyproject.toml` enforces, so it measures
exactly what a user's client sees.

    inputs    TREC qrels and runs, MS MARCO-style TSV queries and collection (streamed)
    systems   what `--systems` names: a model, `auto[:budget]`, `cascade`, `first-stage`
    client    the rerank requests: bounded concurrency, per-request latency, failures
    runs      reranked TREC run files, written per query so an interrupted run resumes
    report    ir-measures metrics, paired t-tests, the table, JSON and the plot
    cli       the `rerank-eval` command
"""
