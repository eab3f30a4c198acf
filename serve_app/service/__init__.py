"""The pipeline a rerank goes through, whatever its route: limits, API keys, quota
admission, Cohere's per-document truncation, routing, then billing (`rerank`); the quota
buckets and usage books behind the ledger (`quotas`, `usage`); and the interfaces the
runtime implements for it (`ports`). Failures are `serve_app.errors` types.

May import: routing, model and the shared modules. Never HTTP (FastAPI, Starlette) or Ray.
"""
