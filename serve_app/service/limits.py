"""Per-request limits from config (`limits:`), checked before any scoring. Plain Python.

The body size limit is enforced earlier, by the HTTP edge, before the body is parsed.
Everything here is an `InvalidRequest` naming the offending field.
"""

from __future__ import annotations

from serve_app.config import LimitsConfig
from serve_app.errors import InvalidRequest
from serve_app.types import RerankRequest


def check_limits(limits: LimitsConfig, request: RerankRequest) -> None:
    texts, query = request.texts, request.query
    if len(texts) > limits.max_documents_per_request:
        raise InvalidRequest(
            f"{len(texts)} documents exceed the limit of "
            f"{limits.max_documents_per_request} per request; split the request",
            "documents",
        )
    if len(query) > limits.max_query_chars:
        raise InvalidRequest(
            f"{len(query)} characters exceed the limit of {limits.max_query_chars}", "query"
        )
    longest = max(range(len(texts)), key=lambda i: len(texts[i]), default=None)
    if longest is not None and len(texts[longest]) > limits.max_document_chars:
        raise InvalidRequest(
            f"{len(texts[longest])} characters exceed the limit of "
            f"{limits.max_document_chars} per document; only a document's first 512 tokens "
            "are scored, so cut it (or split it) before sending",
            f"documents.{longest}",
        )
    top_n = request.top_n
    if limits.max_top_n is not None and top_n is not None and top_n > limits.max_top_n:
        raise InvalidRequest(f"must be at most {limits.max_top_n}", "top_n")
    # JSON can carry lone UTF-16 surrogates ("\ud800"); no tokenizer can encode them.
    for param, text in (("query", query), *((f"documents.{i}", t) for i, t in enumerate(texts))):
        if not _is_unicode(text):
            raise InvalidRequest("text contains an unpaired surrogate", param)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
