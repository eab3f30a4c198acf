"""Per-key quotas as token buckets: requests per second and documents per minute.
Plain Python, no Ray: the usage ledger holds one `QuotaBook`, so the limits hold across
every ingress replica. Time is passed in, so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import QuotaSettings


class TokenBucket:
    """Holds up to `capacity` tokens and refills at `rate_per_s`; starts full."""

    def __init__(self, rate_per_s: float, capacity: float, now: float):
        self.rate = rate_per_s
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens are available (0 if they are now); takes nothing."""
        self._refill(now)
        if self.tokens >= amount:
            return 0.0
        return (amount - self.tokens) / self.rate

    def retune(self, rate_per_s: float, capacity: float, now: float) -> None:
        self._refill(now)
        self.rate, self.capacity = rate_per_s, capacity
        self.tokens = min(self.tokens, capacity)

    def take(self, amount: float) -> None:
        self.tokens -= amount


@dataclass(frozen=True)
class Admission:
    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""


def never_admitted(quota: QuotaSettings, documents: int) -> str | None:
    """Why a request of `documents` documents can never be admitted under `quota`, however
    long it waits (more documents than a full minute's allowance), or None."""
    per_minute = quota.documents_per_minute
    if per_minute is not None and documents > per_minute:
        return (
            f"{documents} documents exceed this key's quota of {per_minute} documents "
            "per minute, so this request can never be admitted; send fewer per request"
        )
    return None


class QuotaBook:
    def __init__(self) -> None:
        self._requests: dict[str, TokenBucket] = {}
        self._documents: dict[str, TokenBucket] = {}

    def admit(self, key_id: str, quota: QuotaSettings, documents: int, now: float) -> Admission:
        """Admit one request of `documents` documents, or say how long to wait. Both
        buckets are checked before either is charged, so a refusal costs nothing."""
        buckets: list[tuple[TokenBucket, float, str]] = []
        if quota.requests_per_second is not None:
            rate = quota.requests_per_second
            bucket = self._bucket(self._requests, key_id, rate, max(1.0, rate), now)
            buckets.append((bucket, 1, "requests per second"))
        if quota.documents_per_minute is not None:
            per_minute = quota.documents_per_minute
            why_never = never_admitted(quota, documents)
            if why_never is not None:  # the ingress refuses these first, as a 422
                return Admission(False, 60.0, why_never)
            bucket = self._bucket(self._documents, key_id, per_minute / 60, per_minute, now)
            buckets.append((bucket, documents, "documents per minute"))
        waits = [(b.wait_for(amount, now), reason) for b, amount, reason in buckets]
        wait, reason = max(waits, default=(0.0, ""))
        if wait > 0:
            return Admission(False, wait, f"quota exceeded: {reason}")
        for bucket, amount, _ in buckets:
            bucket.take(amount)
        return Admission(True)

    @staticmethod
    def _bucket(
        book: dict[str, TokenBucket], key_id: str, rate: float, capacity: float, now: float
    ) -> TokenBucket:
        bucket = book.get(key_id)
        if bucket is None:
            bucket = book[key_id] = TokenBucket(rate, capacity, now)
        elif bucket.rate != rate or bucket.capacity != capacity:
            # New limits (a rollout: old and new ingress replicas alternate) keep what is
            # left, refilled at the old rate until now and capped at the new capacity, so
            # alternating limits never hand out a full bucket again.
            bucket.retune(rate, capacity, now)
        return bucket
