"""Per-request limits, prices and Cohere's per-document truncation. No Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, LimitsConfig, PricingConfig
from serve_app.errors import InvalidRequest
from serve_app.service.limits import check_limits
from serve_app.types import RerankRequest

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"


def call(texts, query="q", top_n=None) -> RerankRequest:
    return RerankRequest(query=query, texts=texts, top_n=top_n)


def test_limits_name_the_field():
    limits = LimitsConfig(max_documents_per_request=3, max_query_chars=5, max_top_n=2)
    check_limits(limits, call(["a", "b", ""]))
    for bad, param in [
        (call(["a"] * 4), "documents"),
        (call(["a"], query="x" * 6), "query"),
        (call(["a"], top_n=3), "top_n"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_limits(limits, bad)
        assert e.value.param == param
    assert LimitsConfig().max_documents_per_request == 1000


def test_unpaired_surrogates_are_rejected_not_sent_to_a_tokenizer():
    limits = LimitsConfig()
    check_limits(limits, call(["naïve café 😀", ""], query="émile"))
    for bad, param in [
        (call(["ok", "a \ud800 b"]), "documents.1"),
        (call(["ok"], query="\udfff"), "query"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_limits(limits, bad)
        assert e.value.param == param


def test_prices_per_model_accept_aliases_and_default():
    pricing = PricingConfig(usd_per_1k_documents={"cross-encoder/ms-marco-MiniLM-L-6-v2": 0.02})
    assert pricing.price(L6) == 0.02 and pricing.price(TINY) == 0.008
    with pytest.raises(ValidationError):
        PricingConfig(usd_per_1k_documents={"no such name!": 1})
    # A name outside the catalog must be a served model's (checked with the models).
    with pytest.raises(ValidationError, match="neither in the catalog nor enabled"):
        AppConfig.model_validate(
            {"models": [{"name": L6}], "pricing": {"usd_per_1k_documents": {"nope": 1}}}
        )
