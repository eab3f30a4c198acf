"""Every architecture users bring, on random-initialised checkpoints (RANDOM WEIGHTS):
pairs encoded by the ingress's encoder and scored by the engine equal sentence-transformers'
`CrossEncoder.predict` on the same checkpoint, on torch and ONNX Runtime; and the start
checks: which logit is the score, and checkpoints transformers cannot load as a sequence
classifier refused with an error naming the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.config import ModelDeploymentConfig
from serve_app.model.backends import EngineStartError
from serve_app.model.engine import CrossEncoderEngine, check_checkpoint
from serve_app.model.tokenization import PairEncoder
from tests.model.architectures import (
    ARCHITECTURES,
    DOCUMENTS,
    QUERY,
    write_architecture,
    write_headless_distilbert,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("architectures")


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("exports"))


def reference_logits(path: Path, column: int) -> np.ndarray:
    """`CrossEncoder.predict`'s logits (no activation) for the test pairs, the score column."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), activation_fn=torch.nn.Identity(), device="cpu")
    predicted = np.asarray(model.predict([(QUERY, d) for d in DOCUMENTS], batch_size=4))
    return predicted if predicted.ndim == 1 else predicted[:, column]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_scores_equal_cross_encoder_predict(kind, backend, root, export_cache):
    path = write_architecture(kind, root)
    two_labels = kind == "bert-two-labels"
    encoder = PairEncoder.from_pretrained(str(path), 64)
    engine = CrossEncoderEngine(
        str(path),
        name=f"test/{kind}",
        backend=backend,
        cpu_threads=1,
        export_cache=export_cache,
        score_label="relevant" if two_labels else None,
    )
    served = engine.score([encoder.encode(QUERY, DOCUMENTS)])[0]
    expected = reference_logits(path, column=1)
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=0)
    # The documents' scores differ by far more than the tolerance: a wrong encoding shows.
    assert np.ptp(expected) > 100 * TOLERANCE
    assert engine.describe()["weights"] == "random"


@pytest.mark.parametrize(
    ("kind", "segments"),
    [("bert", True), ("electra", True), ("distilbert", False), ("xlm-roberta", False)],
)
def test_checkpoint_facts_follow_the_checkpoints_config(kind, segments, root):
    facts = check_checkpoint(kind, str(write_architecture(kind, root)))
    assert facts.segments is segments
    assert facts.max_length == 512  # XLM-R: 514 positions, the first two after padding
    assert (facts.num_labels, facts.score_column, facts.random_weights) == (1, 0, True)


@pytest.mark.parametrize("label", ["relevant", "RELEVANT", 1])
def test_score_label_by_name_any_case_or_index(label, root):
    path = str(write_architecture("bert-two-labels", root))
    assert check_checkpoint("m", path, label).score_column == 1
    assert check_checkpoint("m", path, "irrelevant").score_column == 0


def test_two_labels_without_score_label_stop_at_start_listing_the_labels(root):
    path = str(write_architecture("bert-two-labels", root))
    with pytest.raises(EngineStartError) as e:
        check_checkpoint("nboost-like", path)
    message = str(e.value)
    assert "nboost-like" in message and "score_label" in message
    assert "'irrelevant'" in message and "'relevant'" in message
    for wrong in ("positive", 2, -1):
        with pytest.raises(EngineStartError, match="none of the checkpoint's labels"):
            check_checkpoint("nboost-like", path, wrong)


def test_a_catalog_cards_score_label_applies_only_to_checkpoints_with_several_labels(root):
    two = str(write_architecture("bert-two-labels", root))
    one = str(write_architecture("bert", root))
    # nboost's card: the second logit; a one-label checkpoint under its name has one.
    nboost = ModelDeploymentConfig(name="nboost/pt-tinybert-msmarco", source=two)
    assert nboost.card().score_label == 1
    engine = CrossEncoderEngine.from_config(nboost, two, cuda_available=False)
    assert engine.describe()["score_column"] == 1
    assert check_checkpoint("m", one, None, default_score_label=1).score_column == 0
    # Explicit configuration wins over the card, and is checked against the checkpoint.
    assert check_checkpoint("m", two, "irrelevant", default_score_label=1).score_column == 0
    with pytest.raises(EngineStartError, match="none of the checkpoint's labels"):
        check_checkpoint("m", one, 1)


def test_a_checkpoint_of_another_model_class_is_refused_naming_the_model(tmp_path):
    path = write_headless_distilbert(tmp_path / "cat")
    name = "sebastian-hofstaetter/distilbert-cat-margin_mse-T2-msmarco"
    with pytest.raises(EngineStartError) as e:
        CrossEncoderEngine(str(path), name=name, backend="torch")
    assert name in str(e.value)
    assert "DistilBertModel, not DistilBertForSequenceClassification" in str(e.value)


def test_a_checkpoint_whose_head_weights_are_missing_is_refused(tmp_path):
    """Named a sequence classifier in its config, but saved without the head: transformers
    would load it with a random head and only warn."""
    path = write_headless_distilbert(tmp_path / "headless")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["DistilBertForSequenceClassification"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineStartError, match="has no weights for classifier.bias"):
        check_checkpoint("headless", str(path))


def test_a_checkpoint_with_its_own_model_type_is_refused(tmp_path):
    path = write_headless_distilbert(tmp_path / "custom")
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="bert_cat", architectures=["BERT_Cat"])
    config["auto_map"] = {"AutoModel": "modeling_bert_cat.BERT_Cat"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineStartError) as e:
        check_checkpoint("custom", str(path))
    message = str(e.value)
    assert "'custom'" in message and "transformers cannot load" in message
    assert "needs its own model code (AutoModel: modeling_bert_cat.BERT_Cat)" in message
