"""Per-request limits from config (`limits:`), checked before any scoring. Plain Python.

The body size limit (413) is enforced earlier, by `http_edge`, before the body is parsed.
Everything here is a 422 naming the offending field.
"""

from __future__ import annotations

from serve_app.compat import RerankCall
from serve_app.config import LimitsConfig
from serve_app.errors import APIError


def check_limits(limits: LimitsConfig, call: RerankCall, documents_field: str) -> None:
    if len(call.texts) > limits.max_documents_per_request:
        raise APIError(
            422, "invalid_request",
            f"{documents_field}: {len(call.texts)} documents exceed the limit of "
            f"{limits.max_documents_per_request} per request; split the request",
            documents_field,
        )
    if len(call.query) > limits.max_query_chars:
        raise APIError(
            422, "invalid_request",
            f"query: {len(call.query)} characters exceed the limit of {limits.max_query_chars}",
            "query",
        )
    if limits.max_top_n is not None and call.top_n is not None and call.top_n > limits.max_top_n:
        raise APIError(
            422, "invalid_request", f"top_n: must be at most {limits.max_top_n}", "top_n"
        )
    # JSON can carry lone UTF-16 surrogates ("\ud800"); no tokenizer can encode them.
    for param, text in (("query", call.query),
                        *((f"{documents_field}.{i}", t) for i, t in enumerate(call.texts))):
        if not _is_unicode(text):
            raise APIError(
                422, "invalid_request", f"{param}: text contains an unpaired surrogate", param
            )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
