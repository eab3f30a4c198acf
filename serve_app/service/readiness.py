"""Readiness as a value refreshed in the background, so `/readyz` (unauthenticated, probed
by every load balancer and kubelet) costs no model calls: a burst of probes reads the last
answer. Plain Python, no Ray.

A probe finds the value at most `max_age_s` old. The runtime refreshes it every
`interval_s` (`run`); without that loop (tests, a stalled task) a probe that finds it stale
starts one refresh that every concurrent probe shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger("ray.serve")


class ReadinessCache:
    def __init__(
        self,
        probe: Callable[[], Awaitable[list[str]]],
        interval_s: float = 1.0,
        max_age_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`probe()`: the models that cannot serve now (empty: ready)."""
        self.probe = probe
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._value: list[str] | None = None
        self._updated = float("-inf")
        self._refreshing: asyncio.Task[list[str]] | None = None

    async def not_ready(self) -> list[str]:
        if self._value is not None and self.clock() - self._updated <= self.max_age_s:
            return self._value
        return await self.refresh()

    async def refresh(self) -> list[str]:
        """Probe the models once, sharing a probe already under way."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._probe())
        # Shielded: a probe request that goes away must not cancel everyone's refresh.
        return await asyncio.shield(self._refreshing)

    async def run(self) -> None:
        """Refresh every `interval_s` until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # the next round tries again; probes meanwhile see stale
                logger.warning("readiness refresh failed", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def _probe(self) -> list[str]:
        value = list(await self.probe())
        self._value, self._updated = value, self.clock()
        return value
