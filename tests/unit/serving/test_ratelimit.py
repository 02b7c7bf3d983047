"""Rate limiting: bursts allowed, then 429 with a wait; shared limits through Redis."""

from __future__ import annotations

import uuid

import pytest

from carecast.serving.ratelimit import RedisLimiter, TokenBucketLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_waits() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(per_minute=60, burst=5, clock=clock)
    assert [limiter.hit("u1") for _ in range(5)] == [0.0] * 5
    wait = limiter.hit("u1")
    assert wait == pytest.approx(1.0)  # one token per second at 60/min
    assert limiter.hit("u2") == 0.0  # keys are independent
    clock.now += 1.0
    assert limiter.hit("u1") == 0.0
    assert retry_after_header(0.2) == "1" and retry_after_header(2.1) == "3"


def test_redis_limiter_is_shared_between_instances() -> None:
    prefix = f"carecast:test:{uuid.uuid4().hex}:"
    a = RedisLimiter("redis://127.0.0.1:6379/0", per_minute=3, prefix=prefix)
    b = RedisLimiter("redis://127.0.0.1:6379/0", per_minute=3, prefix=prefix)
    try:
        results = [a.hit("k"), b.hit("k"), a.hit("k"), b.hit("k")]
        assert results[:3] == [0.0, 0.0, 0.0] and results[3] > 0
    finally:
        for key in a.client.scan_iter(prefix + "*"):
            a.client.delete(key)
        a.client.close()
        b.client.close()


def test_api_answers_429_with_retry_after(app, client, tokens, store) -> None:  # type: ignore[no-untyped-def]
    from carecast.serving.context import services
    from tests.unit.serving.conftest import bearer

    with app.app_context():
        services().limiter = TokenBucketLimiter(per_minute=60, burst=3)
    token = next(iter(tokens.values()))
    codes = [client.get("/api/v1/models", headers=bearer(token)).status_code for _ in range(5)]
    assert codes[:3] != [429, 429, 429] and codes[-1] == 429
    denied = client.get("/api/v1/models", headers=bearer(token))
    assert denied.status_code == 429 and int(denied.headers["Retry-After"]) >= 1
    assert denied.get_json()["error"]["code"] == "too_many_requests"
    # guessing tokens from one address is throttled too
    guesses = [client.get("/api/v1/models", headers=bearer(f"cc_guess{i}")).status_code for i in range(5)]
    assert guesses[:3] == [401, 401, 401] and guesses[-1] == 429
