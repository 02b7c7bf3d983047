"""Drift on a schedule: an alert is logged as a structured warning (no values) and counted in
carecast_drift_alerts; a quiet check is not; tasks without a champion are skipped; the schedule follows
CARECAST_DRIFT_INTERVAL_HOURS and is off under test."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from tests.unit.serving.ui.test_monitoring_page import TASK, build

from carecast.cli import main
from carecast.config import Settings
from carecast.jobs.drift import ALERT_EVENT, check_tasks, drift_scheduler_from_settings, report_drift
from carecast.jobs.live import LiveStats
from carecast.models.registry import Registry
from carecast.models.training import reference_distributions
from carecast.monitoring.drift import compare_with_reference
from carecast.monitoring.logs import JsonFormatter
from carecast.store import Store


def _alerts(task: str, version: str) -> float:
    return REGISTRY.get_sample_value("carecast_drift_alerts_total", {"task": task, "model_version": version}) or 0.0


def _reference_and_recent(shift: float) -> tuple[dict, pd.DataFrame]:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"heart_rate": rng.normal(80, 10, 4000)})
    recent = pd.DataFrame({"heart_rate": rng.normal(80 + shift, 10, 1000)})
    return reference_distributions(train, ["heart_rate"], []), recent


def test_an_alert_is_logged_without_values_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    reference, recent = _reference_and_recent(shift=25.0)
    report = compare_with_reference(reference, recent, task="deterioration_24h", n_patients=300,
                                    model_version="v-drift-1")
    assert report.alerted
    before = _alerts("deterioration_24h", "v-drift-1")
    with caplog.at_level(logging.INFO, logger="carecast.jobs.drift"):
        assert report_drift(report) is True
    assert _alerts("deterioration_24h", "v-drift-1") == before + 1
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    line = JsonFormatter().format(record)
    assert '"event":"drift:alert"' in line and '"task":"deterioration_24h"' in line
    assert '"model_version":"v-drift-1"' in line and "heart_rate" in line
    assert f"{recent['heart_rate'].iloc[0]:.1f}" not in line  # names, never values
    assert record.__dict__["event"] == ALERT_EVENT


def test_a_quiet_check_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    reference, recent = _reference_and_recent(shift=0.0)
    report = compare_with_reference(reference, recent, task="deterioration_24h", n_patients=300,
                                    model_version="v-quiet-1")
    assert report.status == "ok"
    with caplog.at_level(logging.INFO, logger="carecast.jobs.drift"):
        assert report_drift(report) is False
    assert _alerts("deterioration_24h", "v-quiet-1") == 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_check_tasks_alerts_on_stored_data_and_skips_a_task_without_a_champion(store: Store, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    world = build(store, registry)  # age drifted, heart rate never stored (see the monitoring page's tests)
    before = _alerts(TASK, world.champion)
    found = check_tasks(store, registry, [TASK, "deterioration_24h"])
    assert found[TASK]["status"] == "alert" and found[TASK]["model_version"] == world.champion
    assert set(found[TASK]["alerted"]) == {"age", "heart_rate_last_4h"}
    assert found["deterioration_24h"] == {"task": "deterioration_24h",
                                          "skipped": "deterioration_24h has no champion model"}
    assert _alerts(TASK, world.champion) == before + 1


def test_the_schedule_follows_the_setting_and_is_off_under_test(tmp_path: Path) -> None:
    assert Settings.from_env({"CARECAST_ENV": "test"}).drift_interval_hours == 0
    assert drift_scheduler_from_settings(Settings.from_env({"CARECAST_ENV": "test"})) is None
    assert drift_scheduler_from_settings(Settings.from_env({"CARECAST_DRIFT_INTERVAL_HOURS": "0"})) is None
    default = drift_scheduler_from_settings(Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path)}))
    assert default is not None and default.interval_s == 6 * 3600 and not default.running
    every = drift_scheduler_from_settings(Settings.from_env({"CARECAST_ENV": "test",
                                                             "CARECAST_DRIFT_INTERVAL_HOURS": "2"}))
    assert every is not None and every.interval_s == 2 * 3600 and every.what == "drift check"
    assert every.first_after_s == every.interval_s  # the first check after one interval, not at start


def test_carecast_live_starts_and_stops_the_drift_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Settings] = []

    class Spy:
        running = False

        def start(self) -> Spy:
            self.running = True
            return self

        def stop(self, timeout: float = 10.0) -> None:
            self.running = False

    spy = Spy()

    def scheduler(settings: Settings) -> Spy:
        started.append(settings)
        return spy

    def feed(*_args: object, **kwargs: object) -> LiveStats:
        assert spy.running, "the drift checks run while the feed streams"
        return LiveStats()

    monkeypatch.setattr("carecast.jobs.drift.drift_scheduler_from_settings", scheduler)
    monkeypatch.setattr("carecast.jobs.live.stream_hospital", feed)
    env = {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test", "CARECAST_DRIFT_INTERVAL_HOURS": "3"}
    out = CliRunner().invoke(main, ["live", "--days", "0.1"], env=env)
    assert out.exit_code == 0, out.output
    assert [s.drift_interval_hours for s in started] == [3.0] and not spy.running
