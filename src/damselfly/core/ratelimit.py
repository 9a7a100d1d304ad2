"""Token-bucket rate limits: a pure bucket (clock injected) and an asyncio wrapper.

The bucket is debt-based: ``reserve(n)`` always succeeds and returns how long the caller must wait
before using the n bytes. A chunk larger than the burst is therefore allowed (it just waits
longer), and several tasks sharing one bucket are served in the order they reserve.
"""

from __future__ import annotations

import asyncio

from damselfly.core.clock import Clock, MonotonicClock


class TokenBucket:
    def __init__(self, rate: float | None, clock: Clock, burst: float | None = None) -> None:
        self.clock = clock
        self._rate: float | None = None
        self.burst = 0.0
        self.tokens = 0.0
        self.stamp = clock.now()
        self.set_rate(rate, burst)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Change the rate (None or 0 = unlimited). Burst defaults to 1/10 s of traffic."""
        self._refill()
        self._rate = rate if rate and rate > 0 else None
        if self._rate is None:
            self.burst = 0.0
            self.tokens = 0.0
            return
        was_unlimited = self.burst == 0.0
        self.burst = burst if burst is not None else max(self._rate / 10, 64 * 1024)
        # a new limit starts with a full bucket; a changed one keeps what it had
        self.tokens = self.burst if was_unlimited else min(self.tokens, self.burst)

    def _refill(self) -> None:
        now = self.clock.now()
        if self._rate is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self._rate)
        self.stamp = now

    def reserve(self, n: int) -> float:
        """Take n tokens (possibly into debt); return the seconds to wait before proceeding."""
        if self._rate is None:
            return 0.0
        self._refill()
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self._rate

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate}, tokens={self.tokens:.0f}, burst={self.burst:.0f})"


class AsyncLimiter:
    """Paces async code through one or more buckets (e.g. per-task and host-wide)."""

    def __init__(self, rate: float | None = None, clock: Clock | None = None) -> None:
        self.bucket = TokenBucket(rate, clock or MonotonicClock())
        self.waited = 0.0  # total seconds spent waiting, for metrics

    @property
    def rate(self) -> float | None:
        return self.bucket.rate

    def set_rate(self, rate: float | None) -> None:
        self.bucket.set_rate(rate)

    async def acquire(self, n: int) -> None:
        delay = self.bucket.reserve(n)
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)


async def acquire_all(limiters: list[AsyncLimiter | None], n: int) -> None:
    """Reserve n bytes from every given limiter and wait for the longest of the delays."""
    delay = 0.0
    for lim in limiters:
        if lim is not None and lim.rate is not None:
            d = lim.bucket.reserve(n)
            lim.waited += d
            delay = max(delay, d)
    if delay > 0:
        await asyncio.sleep(delay)
