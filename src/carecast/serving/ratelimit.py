"""Rate limits: a token bucket per caller, answering 429 with Retry-After when it is empty.

In-process buckets limit each server process on its own (the embedded default); with a Redis URL
the limit is shared by every process and host (a fixed one-minute window per key in Redis).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

MAX_KEYS = 10_000
# Failed password sign-ins per source address per minute (bursts of as many): guessing passwords is throttled
# long before the general rate, and accounts also lock after 5 failures (carecast.security.users).
SIGN_IN_FAILURES_PER_MINUTE = 10


class Limiter(Protocol):
    def hit(self, key: str) -> float:
        """0.0 if the request may proceed, else the seconds to wait before retrying."""
        ...


class TokenBucketLimiter:
    """`per_minute` requests per key, with bursts up to `burst`; thread-safe; bounded memory."""

    def __init__(self, per_minute: int, burst: int | None = None, clock: Any = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = float(burst or max(1, per_minute // 6))
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, key: str) -> float:
        """Like `hit`, without spending a token."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def hit(self, key: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
        return wait


class RedisLimiter:
    """A fixed one-minute window per key shared by all processes (INCR + EXPIRE in one transaction)."""

    def __init__(self, url: str, per_minute: int, *, prefix: str = "carecast:rate:", client: Any = None) -> None:
        import redis

        self.client = client or redis.Redis.from_url(url)
        self.per_minute = per_minute
        self.prefix = prefix

    def hit(self, key: str) -> float:
        window = int(time.time() // 60)
        name = f"{self.prefix}{key}:{window}"
        pipe = self.client.pipeline()
        pipe.incr(name)
        pipe.expire(name, 120)
        count, _ = pipe.execute()
        if int(count) <= self.per_minute:
            return 0.0
        return float(60 - (time.time() % 60))

    def peek(self, key: str) -> float:
        """Like `hit`, without counting a request."""
        window = int(time.time() // 60)
        count = self.client.get(f"{self.prefix}{key}:{window}")
        if count is None or int(count) < self.per_minute:
            return 0.0
        return float(60 - (time.time() % 60))


def sign_in_failure_limiter(redis_url: str | None) -> TokenBucketLimiter | RedisLimiter:
    """The budget of failed password sign-ins per address: shared through Redis when there is one."""
    if redis_url and redis_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(redis_url, SIGN_IN_FAILURES_PER_MINUTE, prefix="carecast:sign-in-failures:")
    return TokenBucketLimiter(SIGN_IN_FAILURES_PER_MINUTE, burst=SIGN_IN_FAILURES_PER_MINUTE)


def retry_after_header(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
