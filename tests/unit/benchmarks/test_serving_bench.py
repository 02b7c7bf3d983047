"""benchmarks/serving.py's own arithmetic: runs combined into one figure, endpoints taken in turn."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
bench: Any = importlib.import_module("serving")


def uniform(n: int, seconds: float, low: float, high: float) -> Any:
    """A wrk run whose latencies spread evenly from low to high ms, as wrk's percentile table gives it."""
    table = {q: low + (high - low) * q / 100 for q in (*bench.WRK_PERCENTILES, 100)}
    return bench.Load(n, seconds, 0, None, reported=table)


def test_runs_combine_into_every_request_over_every_second() -> None:
    exact = bench.Load.combine([bench.Load(3, 1.0, 1, "503", latencies_ms=np.array([1.0, 2.0, 3.0])),
                                bench.Load(1, 3.0, 0, None, latencies_ms=np.array([4.0]))])
    assert exact.rate == pytest.approx(1.0) and exact.errors == 1 and exact.first_error == "503"
    assert exact.pct(50) == pytest.approx(2.5)
    one = bench.Load(20_000, 10.0, 0, None, reported={50: 3.0, 99: 14.0, 100: 20.0})
    assert one.pct(99) == 14.0  # wrk's own figure, not one drawn towards p50
    # wrk's percentiles per run: the percentiles of all the runs' requests together. 1,000 requests in 0-10 ms
    # and 3,000 in 10-20 ms: a quarter are under 10 ms, so the median is a third of the way into 10-20 ms.
    combined = bench.Load.combine([uniform(1000, 2.0, 0.0, 10.0), uniform(3000, 2.0, 10.0, 20.0)])
    assert combined.rate == pytest.approx(1000.0)
    assert combined.pct(50) == pytest.approx(10.0 + 10.0 / 3, abs=0.01)
    assert combined.pct(99) == pytest.approx(10.0 + 10.0 * (99 - 25) / 75, abs=0.01)
    same = bench.Load.combine([uniform(500, 1.0, 2.0, 8.0), uniform(1500, 3.0, 2.0, 8.0)])
    assert same.pct(99) == pytest.approx(uniform(1, 1.0, 2.0, 8.0).pct(99), abs=1e-9)


def test_endpoints_are_loaded_in_turn_with_the_order_rotated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float, bool]] = []

    def fake_load(port: int, method: str, path: str, body: Any, headers: Any, seconds: float, connections: int, *,
                  warm_up: bool = True) -> Any:
        calls.append((path, seconds, warm_up))
        return bench.Load(int(seconds * 100), seconds, 0, None, latencies_ms=np.full(int(seconds * 100), 1.0))

    monkeypatch.setattr(bench, "load", fake_load)
    seen: list[str] = []
    endpoints = {name: bench.Endpoint("GET", f"/{name}", None, {}) for name in ("a", "b", "c")}
    results = bench.interleaved(0, endpoints, 6.0, 3, 8, during={"b": lambda: seen.append("b")})
    warm, measured = calls[:3], calls[3:]
    assert [c[0] for c in warm] == ["/a", "/b", "/c"]
    assert [c[0] for c in measured] == ["/a", "/b", "/c", "/b", "/c", "/a", "/c", "/a", "/b"]
    assert all(seconds == 2.0 for _, seconds, _ in measured) and not any(w for _, _, w in calls)
    assert seen == ["b"] and {name: [r.seconds for r in runs] for name, runs in results.items()} == {
        "a": [2.0, 2.0, 2.0], "b": [2.0, 2.0, 2.0], "c": [2.0, 2.0, 2.0]}


def test_round_shares_pair_each_round_with_the_reference_of_the_same_round() -> None:
    runs = [bench.Load(100, 1.0, 0, None), bench.Load(300, 2.0, 0, None)]
    reference = [bench.Load(400, 1.0, 0, None), bench.Load(200, 1.0, 0, None)]
    assert bench.round_shares(runs, reference) == [pytest.approx(0.25), pytest.approx(0.75)]
    with pytest.raises(ValueError):  # a round without its reference is an error, not a silently shorter list
        bench.round_shares(runs, reference[:1])
