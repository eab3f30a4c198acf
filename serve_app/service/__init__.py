"""The pipeline a rerank goes through, whatever its route: limits, API keys, quota
admission, routing (which tokenizes, cuts and chunks documents), then billing (`rerank`); the quota
buckets and the ledger's state over the usage store (`quotas`, `usage`); and the
interfaces the runtime implements for it (`ports`). Failures are `serve_app.errors` types.

May import: storage, routing, model and the shared modules. Never HTTP (FastAPI, Starlette) or Ray.
"""
