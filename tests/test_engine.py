"""The engine on random-initialised checkpoints of all five real architectures, against
the reference: sentence-transformers' CrossEncoder and the tokenizer's own pair encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.checkpoints import RANDOM_INIT_MARKER, write_random_checkpoint
from serve_app.catalog import load_catalog
from serve_app.engine import CrossEncoderEngine, ScoreJob
from tests.conftest import ALL_MODELS, checkpoint_path

QUERY = "what is the capital of france"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "France's capital city, Paris, has a population of about two million.",
    "Bananas are yellow.",
    "Émile Zola wrote novels; naïve café résumé — UTF-8 text with accents.",
]


@pytest.fixture(scope="module", params=ALL_MODELS)
def engine(request, checkpoint_root) -> CrossEncoderEngine:
    return CrossEncoderEngine(checkpoint_path(checkpoint_root, request.param), cpu_threads=2)


def test_pairs_equal_the_tokenizers_own_pair_encoding(engine):
    pairs = engine._encode([ScoreJob(QUERY, DOCS)])
    reference = engine.tokenizer([QUERY] * len(DOCS), DOCS)
    assert pairs.ids == reference["input_ids"]
    for ids, head, types in zip(pairs.ids, pairs.first_segment, reference["token_type_ids"]):
        assert types == [0] * head + [1] * (len(ids) - head)


def test_logits_match_sentence_transformers_within_1e_4(engine):
    from sentence_transformers import CrossEncoder

    served = engine.score([ScoreJob(QUERY, DOCS)], max_batch_docs=3)[0].logits
    reference = CrossEncoder(engine.source, device="cpu").predict(
        [(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(served, reference, atol=1e-4, rtol=0)
    assert np.argsort(-np.asarray(served)).tolist() == np.argsort(-reference).tolist()


def test_long_pairs_truncate_the_document_not_error(engine):
    long_query = "why " * 300
    long_doc = "word " * 2000
    result = engine.score([ScoreJob(long_query, [long_doc, "short"])])[0]
    assert result.tokens[0] == 512
    assert np.isfinite(result.logits).all()
    ids = engine._encode([ScoreJob(long_query, [long_doc])]).ids[0]
    assert ids[: 1 + engine.max_query_tokens] == [engine.cls_id] + [
        engine.tokenizer.convert_tokens_to_ids("why")
    ] * engine.max_query_tokens


def test_batching_does_not_change_scores(engine):
    jobs = [ScoreJob(QUERY, DOCS), ScoreJob("bananas", DOCS[:3])]
    together = engine.score(jobs, max_batch_tokens=100_000, max_batch_docs=1000)
    one_by_one = [
        engine.score([ScoreJob(job.query, [d])], max_batch_docs=1)[0].logits[0]
        for job in jobs
        for d in job.documents
    ]
    np.testing.assert_allclose(
        [x for r in together for x in r.logits], one_by_one, atol=1e-5, rtol=0
    )


def test_random_checkpoints_are_labelled_and_deterministic(tmp_path, checkpoint_root):
    card = load_catalog().resolve("cross-encoder/ms-marco-TinyBERT-L2-v2")
    again = write_random_checkpoint(card, tmp_path / card.short_name)
    a = CrossEncoderEngine(str(again))
    b = CrossEncoderEngine(checkpoint_path(checkpoint_root, card.name))
    assert a.random_weights and a.describe()["weights"] == "random"
    assert getattr(a.model.config, RANDOM_INIT_MARKER)
    job = [ScoreJob(QUERY, DOCS)]
    assert a.score(job)[0].logits == b.score(job)[0].logits
