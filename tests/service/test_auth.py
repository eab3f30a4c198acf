"""API keys: hashing, Bearer authentication, keys from the environment. No Ray."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppConfig, AuthConfig
from serve_app.errors import Unauthorized
from serve_app.service.auth import (
    ANONYMOUS,
    KEY_PREFIX,
    MIN_KEY_BITS,
    Authenticator,
    estimated_bits,
    hash_key,
    keys_from_env,
    main,
)

KEY = "rr-secret-key"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
DEPLOYMENTS = Path(__file__).parents[2] / "deployments"


def auth_config(**kw) -> AuthConfig:
    return AuthConfig.model_validate(
        {"enabled": True, "keys": [{"id": "alice", "sha256": hash_key(KEY)}], **kw}
    )


def test_hash_is_hex_sha256_and_config_never_needs_the_key():
    assert hash_key(KEY) == hashlib.sha256(KEY.encode()).hexdigest()
    entry = auth_config().keys[0]
    assert KEY not in entry.model_dump_json()


def test_bearer_key_authenticates_to_its_id_and_quota():
    auth = Authenticator(auth_config(default_quota={"requests_per_second": 5}), environ={})
    principal = auth.authenticate(f"Bearer {KEY}")
    assert principal.key_id == "alice" and principal.quota.requests_per_second == 5
    assert auth.authenticate(f"bearer   {KEY} ").key_id == "alice"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", KEY, f"Basic {KEY}", "Bearer wrong", f"Bearer {KEY}x"]
)
def test_missing_malformed_or_wrong_keys_are_401(header):
    with pytest.raises(Unauthorized) as e:
        Authenticator(auth_config(), environ={}).authenticate(header)
    assert KEY not in e.value.message


def test_disabled_auth_makes_everyone_anonymous():
    auth = Authenticator(AuthConfig(enabled=False), environ={})
    assert auth.authenticate(None).key_id == ANONYMOUS


def test_keys_come_from_an_environment_variable_in_two_forms():
    digest = hash_key("k2")
    assert [k.id for k in keys_from_env("K", {"K": f"bob:{digest}, carol:{hash_key('k3')}"})] == [
        "bob",
        "carol",
    ]
    entries = json.dumps([{"id": "dan", "sha256": digest, "quota": {"documents_per_minute": 10}}])
    (dan,) = keys_from_env("K", {"K": entries})
    assert dan.quota.documents_per_minute == 10
    auth = Authenticator(AuthConfig(keys_env="K"), environ={"K": f"bob:{digest}"})
    assert auth.authenticate("Bearer k2").key_id == "bob"
    with pytest.raises(ValueError):
        keys_from_env("K", {"K": "no-colon"})


def test_enabled_auth_without_keys_or_with_duplicate_ids_refuses_to_start():
    with pytest.raises(ValueError, match="no keys"):
        Authenticator(AuthConfig(keys_env="UNSET"), environ={})
    with pytest.raises(ValueError, match="twice"):
        Authenticator(auth_config(keys_env="K"), environ={"K": f"alice:{hash_key('other')}"})
    with pytest.raises(ValidationError):
        AuthConfig.model_validate({"keys": [{"id": "x", "sha256": "not-hex"}]})


def test_hash_key_cli_hashes_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    main(["--stdin", "--id", "alice"])
    out = capsys.readouterr().out
    assert hash_key(KEY) in out and KEY not in out
    main([])
    generated = capsys.readouterr().out.splitlines()[0].rsplit(" ", 1)[-1]
    assert generated.startswith("rr-") and len(generated) > 40


def test_production_configs_require_keys_and_the_demo_does_not():
    def args(name: str) -> AppConfig:
        raw = yaml.safe_load((DEPLOYMENTS / name).read_text())
        return AppConfig.model_validate(raw["applications"][0]["args"])

    assert args("demo.yaml").auth.enabled is False
    for name in ("gpu-1.yaml", "local-cpu.yaml"):
        config = args(name)
        assert config.auth.enabled and config.auth.keys_env == "RERANK_API_KEYS"
        assert config.usage.store == ("postgres" if name == "gpu-1.yaml" else "sqlite")


def test_a_raw_key_given_for_its_hash_never_appears_in_the_error():
    raw = "rr-this-is-the-raw-secret"
    for variable in (f"team:{raw}", json.dumps([{"id": "team", "sha256": raw}])):
        with pytest.raises(ValueError) as e:
            keys_from_env("K", {"K": variable})
        assert raw not in str(e.value) and "sha256" in str(e.value)
    with pytest.raises(ValueError) as e:
        AppConfig.model_validate(
            {"models": [{"name": TINY}], "auth": {"keys": [{"id": "team", "sha256": raw}]}}
        )
    assert raw not in str(e.value) and "auth.keys.0.sha256" in str(e.value)


def test_hash_key_cli_warns_about_a_weak_key_only(monkeypatch, capsys):
    import io

    for weak in ("hunter2", "correct-horse-battery", KEY):
        monkeypatch.setattr("sys.stdin", io.StringIO(weak + "\n"))
        main(["--stdin"])
        assert "warning" in capsys.readouterr().err
    strong = KEY_PREFIX + secrets.token_urlsafe(32)
    monkeypatch.setattr("sys.stdin", io.StringIO(strong + "\n"))
    main(["--stdin"])
    assert capsys.readouterr().err == ""
    assert estimated_bits(strong) > MIN_KEY_BITS > estimated_bits("correct-horse-battery")
