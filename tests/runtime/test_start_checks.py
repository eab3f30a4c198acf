"""A checkpoint that cannot be served stops the application before anything deploys:
`build_app` checks every model's checkpoint it can read on this machine, so Serve never
starts (and restarts) replicas that would fail at start. No Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.model.backends import EngineStartError
from serve_app.runtime.builder import build_app
from tests.model.architectures import write_architecture, write_headless_distilbert

CAT = "sebastian-hofstaetter/distilbert-cat-margin_mse-T2-msmarco"


def app(tmp_path: Path, *models: dict) -> dict:
    return {
        "models": list(models),
        "auth": {"enabled": False},
        "usage": {"sqlite_path": str(tmp_path / "usage.db")},
    }


def test_a_checkpoint_transformers_cannot_load_as_a_classifier_stops_the_build(tmp_path):
    good = write_architecture("bert", tmp_path)
    cat = write_headless_distilbert(tmp_path / "cat")
    args = app(
        tmp_path, {"name": "my-bert", "source": str(good)}, {"name": CAT, "source": str(cat)}
    )
    with pytest.raises(EngineStartError) as e:
        build_app(args)
    assert CAT in str(e.value) and "not DistilBertForSequenceClassification" in str(e.value)


def test_two_labels_without_score_label_stop_the_build(tmp_path):
    two = write_architecture("bert-two-labels", tmp_path)
    with pytest.raises(EngineStartError, match="'my-nboost'.*2 labels"):
        build_app(app(tmp_path, {"name": "my-nboost", "source": str(two)}))
    # Named, it builds (nothing is deployed: no Ray here); a catalog card's default works too.
    build_app(app(tmp_path, {"name": "my-nboost", "source": str(two), "score_label": "relevant"}))
    build_app(app(tmp_path, {"name": "nboost/pt-tinybert-msmarco", "source": str(two)}))


def test_a_source_not_on_this_machine_is_left_to_its_replicas(tmp_path):
    """Another node's directory: its replicas check it at start."""
    build_app(app(tmp_path, {"name": "elsewhere", "source": str(tmp_path / "not-here")}))
