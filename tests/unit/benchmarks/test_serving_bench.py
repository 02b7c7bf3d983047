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


def wrk_like(n: int, seconds: float, p50: float, p99: float) -> Any:
    return bench.Load(n, seconds, 0, None, reported={50: p50, 99: p99})


def test_runs_combine_into_every_request_over_every_second() -> None:
    exact = bench.Load.combine([bench.Load(3, 1.0, 1, "503", latencies_ms=np.array([1.0, 2.0, 3.0])),
                                bench.Load(1, 3.0, 0, None, latencies_ms=np.array([4.0]))])
    assert exact.rate == pytest.approx(1.0) and exact.errors == 1 and exact.first_error == "503"
    assert exact.pct(50) == pytest.approx(2.5)
    assert wrk_like(20_000, 10.0, 3.0, 14.0).pct(99) == 14.0  # wrk's own figure, not one interpolated towards p50
    # wrk's runs carry percentiles only: the median run's p50 and the worst run's p99
    runs = [wrk_like(1000, 2.0, 1.0, 5.0), wrk_like(3000, 2.0, 2.0, 12.0), wrk_like(2000, 2.0, 3.0, 7.0)]
    combined = bench.Load.combine(runs)
    assert combined.rate == pytest.approx(6000 / 6.0)
    assert combined.pct(50) == pytest.approx(2.0)
    assert combined.pct(99) == 12.0


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
    assert seen == ["b"] and {name: r.seconds for name, r in results.items()} == {"a": 6.0, "b": 6.0, "c": 6.0}
