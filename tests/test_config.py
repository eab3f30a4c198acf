"""The shared layer: the model catalog and the typed config. No Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.catalog import UnknownModelError, load_catalog
from serve_app.config import AppConfig, ModelDeploymentConfig

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


# -- catalog ---------------------------------------------------------------------------


def test_catalog_has_the_five_models_with_published_figures():
    catalog = load_catalog()
    assert sorted(catalog.cards) == sorted(
        [
            "cross-encoder/ms-marco-TinyBERT-L2-v2",
            "cross-encoder/ms-marco-MiniLM-L2-v2",
            "cross-encoder/ms-marco-MiniLM-L4-v2",
            "cross-encoder/ms-marco-MiniLM-L6-v2",
            "cross-encoder/ms-marco-MiniLM-L12-v2",
        ]
    )
    l12 = catalog.cards["cross-encoder/ms-marco-MiniLM-L12-v2"]
    assert (l12.num_hidden_layers, l12.hidden_size) == (12, 384)
    assert l12.ndcg10_trec_dl19 == 74.31 and l12.v100_docs_per_s == 960


@pytest.mark.parametrize(
    "spelling",
    [
        L6,
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "CROSS-ENCODER/MS-MARCO-MINILM-L6-V2",
        "ms-marco-MiniLM-L-6-v2",
        " cross-encoder/ms-marco-MiniLM-L6-v2 ",
    ],
)
def test_aliases_resolve_to_the_canonical_name(spelling):
    assert load_catalog().resolve(spelling).name == L6


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UnknownModelError) as e:
        load_catalog().resolve("cross-encoder/ms-marco-MiniLM-L7-v2")
    assert L6 in e.value.available


# -- config ----------------------------------------------------------------------------


def test_model_defaults_merge_under_each_model_and_alias_is_canonicalised():
    config = AppConfig.model_validate(
        {
            "model_defaults": {"num_gpus": 0.2, "batching": {"max_batch_size": 8}},
            "models": [
                {"name": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
                {
                    "name": "cross-encoder/ms-marco-MiniLM-L12-v2",
                    "num_gpus": 0.5,
                    "batching": {"batch_wait_timeout_s": 0.01},
                },
            ],
        }
    )
    l6, l12 = config.models
    assert l6.name == L6 and l6.num_gpus == 0.2 and l6.batching.max_batch_size == 8
    assert l12.num_gpus == 0.5
    assert l12.batching.max_batch_size == 8 and l12.batching.batch_wait_timeout_s == 0.01
    options = l12.deployment_options()
    assert options["name"] == "ms-marco-MiniLM-L12-v2"
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert options["user_config"]["batch_wait_timeout_s"] == 0.01
    assert config.default_model is None and config.enabled_models[0] == L6


@pytest.mark.parametrize(
    "bad",
    [
        {"models": []},
        {"models": [{"name": "nope"}]},
        {"models": [{"name": L6}, {"name": "cross-encoder/ms-marco-MiniLM-L-6-v2"}]},
        {"models": [{"name": L6, "num_gpus": -1}]},
        {"models": [{"name": L6, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]},
        {"models": [{"name": L6, "unknown_knob": 1}]},
        {"models": [{"name": L6}], "default_model": "cross-encoder/ms-marco-MiniLM-L12-v2"},
        {"models": [{"name": L6}], "ingress": {"max_ongoing_requests": 64, "max_in_flight": 64}},
        {"models": [{"name": L6}], "ingress": {"tokenizer_threads": 0}},
    ],
)
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValidationError):
        AppConfig.model_validate(bad)


def test_the_ingress_sheds_before_serve_would_queue():
    default = AppConfig.model_validate({"models": [{"name": L6}]}).ingress
    assert default.admission_limit == 240 < default.max_ongoing_requests
    tuned = {"max_ongoing_requests": 64, "max_in_flight": 10}
    assert (
        AppConfig.model_validate(
            {"models": [{"name": L6}], "ingress": tuned}
        ).ingress.admission_limit
        == 10
    )


def test_source_defaults_to_hub_id_or_random_checkpoint_dir(monkeypatch, tmp_path):
    assert ModelDeploymentConfig(name=L6).resolved_source() == L6
    monkeypatch.setenv("RERANK_RANDOM_CHECKPOINTS", str(tmp_path))
    demo = ModelDeploymentConfig(name=L6, random_init=True)
    assert demo.resolved_source() == str(tmp_path / "ms-marco-MiniLM-L6-v2")
