"""API keys: Bearer tokens checked against SHA-256 hashes from config. Plain Python, no Ray.

Keys are never stored or logged: config holds `sha256(key)` only. Every presented key is
hashed and compared with every stored hash through `hmac.compare_digest`, without an early
exit, so response time tells nothing about which hash came close.

    rerank-hash-key            # generate a new key; prints the key and its hash
    rerank-hash-key --stdin    # hash an existing key read from stdin (warns if weak)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from serve_app.config import ApiKeyConfig, AuthConfig, QuotaSettings
from serve_app.errors import Unauthorized

ANONYMOUS = "anonymous"
KEY_PREFIX = "rr-"
MIN_KEY_BITS = 128


def estimated_bits(key: str) -> float:
    """An upper bound on a key's entropy: its length times the bits of the smallest
    character classes (digits, lower, upper, other ASCII, anything else) it draws from.
    A key with less than this is guessable however it was made; one with more may still be."""
    classes = [
        (str.isdigit, 10),
        (str.islower, 26),
        (str.isupper, 26),
        (lambda c: c.isascii() and not c.isalnum(), 33),
    ]
    alphabet = sum(size for test, size in classes if any(test(c) for c in key if c.isascii()))
    if any(not c.isascii() for c in key):
        alphabet += 1000  # generous: some non-ASCII script
    return len(key) * math.log2(max(alphabet, 2))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    key_id: str
    quota: QuotaSettings


def keys_from_env(variable: str | None, environ: Mapping[str, str]) -> list[ApiKeyConfig]:
    """Keys from `auth.keys_env`: `id:sha256[,id:sha256...]` or a JSON list of key entries."""
    raw = (environ.get(variable) or "").strip() if variable else ""
    if not raw:
        return []
    if raw.startswith("["):
        return [ApiKeyConfig.model_validate(entry) for entry in json.loads(raw)]
    keys = []
    for item in raw.split(","):
        key_id, sep, digest = item.strip().partition(":")
        if not sep:
            raise ValueError(f"{variable}: expected id:sha256, got an entry without ':'")
        keys.append(ApiKeyConfig(id=key_id, sha256=digest))
    return keys


class Authenticator:
    def __init__(self, config: AuthConfig, environ: Mapping[str, str] | None = None):
        self.enabled = config.enabled
        self.default_quota = config.default_quota
        keys = [
            *config.keys,
            *keys_from_env(config.keys_env, os.environ if environ is None else environ),
        ]
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"an API key id is listed twice: {sorted(ids)}")
        if self.enabled and not keys:
            raise ValueError(
                f"auth is enabled but no keys are configured (auth.keys, or ${config.keys_env})"
                if config.keys_env
                else "auth is enabled but no keys are configured (auth.keys)"
            )
        self._digests = [bytes.fromhex(k.sha256) for k in keys]
        self._principals = [Principal(k.id, k.quota or config.default_quota) for k in keys]

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header value; raises `Unauthorized`."""
        if not self.enabled:
            return Principal(ANONYMOUS, self.default_quota)
        if not authorization:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for digest, principal in zip(self._digests, self._principals):
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            raise Unauthorized("invalid API key")
        return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Make an API key and the hash to configure.")
    parser.add_argument("--stdin", action="store_true", help="hash a key read from stdin")
    parser.add_argument("--id", default="my-key", help="key id for the printed config entry")
    args = parser.parse_args(argv)
    if args.stdin:
        key = sys.stdin.readline().strip()
        if not key:
            parser.error("no key on stdin")
        bits = estimated_bits(key)
        if bits < MIN_KEY_BITS:
            print(
                f"warning: this key has at most about {bits:.0f} bits of entropy, below "
                f"{MIN_KEY_BITS}: a guessable key; `rerank-hash-key` without --stdin makes "
                "a strong one",
                file=sys.stderr,
            )
    else:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        print(f"key (give to the client, store nowhere else): {key}")
    print(f"config entry: {{id: {args.id}, sha256: {hash_key(key)}}}")
    print(f"or in auth.keys_env: {args.id}:{hash_key(key)}")


if __name__ == "__main__":
    main()
