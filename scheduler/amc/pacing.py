"""Request pacing: a token bucket per account, paused by AMC's Retry-After.

AMC's request limits are dynamic token buckets with no published figure;
pacing our own requests keeps a burst of polls from provoking a storm of
429s, and a Retry-After from AMC holds every request of that account.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")

        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (AMC said Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def delay(self) -> float:
        """How long a request would wait now, without taking a token."""
        now = self._clock()
        self._refill(now)
        paused = max(0.0, self._paused_until - now)
        short = max(0.0, 1.0 - self._tokens) / self.rate
        return max(paused, short)

    async def acquire(self) -> float:
        """Wait for a token; returns how long the caller waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                wait = max(0.0, self._paused_until - now)
                if wait == 0.0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited

                if wait == 0.0:
                    wait = (1.0 - self._tokens) / self.rate

                await asyncio.sleep(wait)
                waited += wait


class Pacer:
    """One bucket per account, created on first use."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, account_id: str) -> TokenBucket:
        bucket = self._buckets.get(account_id)
        if bucket is None:
            bucket = self._buckets[account_id] = TokenBucket(self.rate, self.burst)

        return bucket
