"""The shared layer: the model catalog and the typed config. No Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.catalog import UnknownModelError, load_catalog
from serve_app.config import AppConfig, ModelDeploymentConfig

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


# -- catalog ---------------------------------------------------------------------------


V2_FAMILY = [
    "cross-encoder/ms-marco-TinyBERT-L2-v2",
    "cross-encoder/ms-marco-MiniLM-L2-v2",
    "cross-encoder/ms-marco-MiniLM-L4-v2",
    "cross-encoder/ms-marco-MiniLM-L6-v2",
    "cross-encoder/ms-marco-MiniLM-L12-v2",
]
# The cards' comparison table (issue 15): NDCG@10, MRR@10, V100 docs/s.
OTHER_CROSS_ENCODERS = {
    "cross-encoder/ms-marco-TinyBERT-L2": (67.43, 30.15, 9000),
    "cross-encoder/ms-marco-TinyBERT-L4": (68.09, 34.50, 2900),
    "cross-encoder/ms-marco-TinyBERT-L6": (69.57, 36.13, 680),
    "cross-encoder/ms-marco-electra-base": (71.99, 36.41, 340),
    "nboost/pt-tinybert-msmarco": (63.63, 28.80, 2900),
    "nboost/pt-bert-base-uncased-msmarco": (70.94, 34.75, 340),
    "nboost/pt-bert-large-msmarco": (73.36, 36.48, 100),
    "Capreolus/electra-base-msmarco": (71.23, 36.89, 340),
    "amberoad/bert-multilingual-passage-reranking-msmarco": (68.40, 35.54, 330),
    "sebastian-hofstaetter/distilbert-cat-margin_mse-T2-msmarco": (72.82, 37.88, 720),
}


def test_catalog_has_the_v2_family_and_the_other_cross_encoders_with_published_figures():
    catalog = load_catalog()
    assert sorted(catalog.cards) == sorted([*V2_FAMILY, *OTHER_CROSS_ENCODERS])
    l12 = catalog.cards["cross-encoder/ms-marco-MiniLM-L12-v2"]
    assert (l12.architecture["num_hidden_layers"], l12.architecture["hidden_size"]) == (12, 384)
    assert l12.ndcg10_trec_dl19 == 74.31 and l12.v100_docs_per_s == 960
    for name, figures in OTHER_CROSS_ENCODERS.items():
        card = catalog.cards[name]
        assert (card.ndcg10_trec_dl19, card.mrr10_msmarco_dev, card.v100_docs_per_s) == figures
        assert card.in_catalog and card.short_name == name.split("/")[1]
    # Two-label checkpoints are scored by their second ("relevant") logit, as their cards say.
    two_labels = [c.name for c in catalog if c.architecture["num_labels"] == 2]
    assert all(catalog.cards[n].score_label == 1 for n in two_labels)
    assert {n.split("/")[0] for n in two_labels} == {"nboost", "amberoad", "Capreolus"}
    assert catalog.resolve("ms-marco-TinyBERT-L-4").name == "cross-encoder/ms-marco-TinyBERT-L4"
    # An organisation must be the right one: a fine-tune under another is not the catalog's.
    assert catalog.find("myorg/ms-marco-MiniLM-L6-v2") is None


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


# -- models outside the catalog --------------------------------------------------------

BGE = "BAAI/bge-reranker-base"


def test_a_model_outside_the_catalog_is_served_from_source_under_its_own_name(tmp_path):
    config = AppConfig.model_validate(
        {
            "models": [
                {"name": L6},
                {"name": BGE, "source": str(tmp_path), "score_label": "LABEL_0"},
                {
                    "name": "my-reranker",
                    "source": str(tmp_path),
                    "figures": {"ndcg10_trec_dl19": 70.1, "v100_docs_per_s": 500},
                },
            ],
            "routing": {"splits": [{"from": L6, "to": "bge-reranker-base", "fraction": 0.1}]},
            "pricing": {"usd_per_1k_documents": {BGE: 0.02}},
        }
    )
    bge, mine = config.models[1], config.models[2]
    assert (bge.name, bge.short_name, bge.in_catalog) == (BGE, "bge-reranker-base", False)
    assert bge.score_label == "LABEL_0"
    assert config.routing.splits[0].target == BGE  # its deployment name, made canonical
    assert bge.deployment_options()["name"] == "bge-reranker-base"
    catalog = config.catalog()
    assert catalog.resolve("bge-reranker-base").name == BGE
    card = catalog.resolve(BGE)
    assert (card.in_catalog, card.ndcg10_trec_dl19, card.v100_docs_per_s) == (False, None, None)
    assert card.public_metadata()["architecture"] == {}
    assert catalog.resolve("MY-RERANKER").ndcg10_trec_dl19 == 70.1
    assert mine.card().mrr10_msmarco_dev is None
    # The catalog itself is unchanged: only this app's copy knows them.
    assert load_catalog().find(BGE) is None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": BGE}, "served from `source`"),
        ({"name": "bad name!", "source": "/x"}, "not a valid name"),
        ({"name": "org/sub/name", "source": "/x"}, "not a valid name"),
        ({"name": BGE, "source": "/x", "random_init": True}, "random_init"),
        ({"name": L6, "figures": {"ndcg10_trec_dl19": 1}}, "drop `figures`"),
        ({"name": "myorg/ms-marco-MiniLM-L6-v2", "source": "/x"}, "share its short name"),
        ({"name": BGE, "source": "/x", "figures": {"ndcg10_trec_dl19": 170}}, "less than"),
    ],
)
def test_bad_models_outside_the_catalog_are_rejected(model, message):
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate({"models": [model]})


def test_two_models_may_not_share_a_deployment_name():
    models = [{"name": "a/reranker", "source": "/x"}, {"name": "b/reranker", "source": "/y"}]
    with pytest.raises(ValidationError, match="share a deployment name"):
        AppConfig.model_validate({"models": models})


@pytest.mark.parametrize(
    "extra",
    [
        {"routing": {"cascade": {"first": "not-served", "second": L6}}},
        {"pricing": {"usd_per_1k_documents": {"not-served": 1.0}}},
        {"routing": {"shadow": {"model": "not-served", "fraction": 0.1}}},
    ],
)
def test_names_outside_the_catalog_elsewhere_must_be_served(extra):
    with pytest.raises(ValidationError, match="not-served"):
        AppConfig.model_validate({"models": [{"name": L6}], **extra})
