"""The Prometheus alert rules and the Grafana dashboard: they parse, every carecast_* name they use is a metric
the code exports (carecast.monitoring.metrics, or a gauge /metrics reads at scrape time), every metric is on
the dashboard, compose mounts them where the configuration looks, and, when promtool is installed (Debian's
`prometheus` package), `promtool check rules`, `promtool check config` and `promtool test rules` on a few
rules with made-up series pass."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from carecast.monitoring import metrics
from tests.unit.deploy import ROOT, load_yaml

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "carecast.json"
PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "carecast.yml"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
OBSERVABILITY = ROOT / "src" / "carecast" / "serving" / "observability.py"
COMPOSE = ROOT / "compose.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")

# What the rules must cover (docs/maintenance.md lists them with who acts).
REQUIRED_ALERTS = {"CareCastHighErrorRate", "CareCastHighLatencyP99", "CareCastScoringQueueBacklog",
                   "CareCastIngestToScoreLag", "CareCastScoringFailures", "CareCastRejectedRecordShare",
                   "CareCastNoPredictions", "CareCastAlertRateHigh", "CareCastAlertRateLow", "CareCastDriftAlert"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created"), "gauge": ("",)}
_NAME = re.compile(r"\bcarecast_[a-z0-9_]+")


# -- what the code exports ------------------------------------------------------------------------------------

def metric_families() -> dict[str, str]:
    """Name -> type of every metric object of carecast.monitoring.metrics."""
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            found[value._name] = value._type
    return found


def scrape_time_gauges() -> set[str]:
    """The gauges /metrics reads when scraped: (name, help, read) tuples in serving/observability.py."""
    tree = ast.parse(OBSERVABILITY.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[0], ast.Constant):
            value = node.elts[0].value
            if isinstance(value, str) and value.startswith("carecast_"):
                names.add(value)
    return names


def exported_series() -> set[str]:
    """Every sample name Prometheus can see: families with their type's suffixes, and the gauges."""
    out = set(scrape_time_gauges())
    for name, kind in metric_families().items():
        out.update(name + suffix for suffix in SUFFIXES[kind])
    return out


def unknown_names(expressions: Iterable[str], known: set[str]) -> dict[str, set[str]]:
    """carecast_* names in PromQL expressions that are not exported, by expression."""
    out = {}
    for expr in expressions:
        missing = set(_NAME.findall(expr)) - known
        if missing:
            out[expr] = missing
    return out


# -- the files ------------------------------------------------------------------------------------------------

def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return found


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of a compose service's bind mounts."""
    volumes = load_yaml(COMPOSE)["services"][service]["volumes"]
    return {v.split(":")[1]: (ROOT / v.split(":")[0]).resolve() for v in volumes if v.startswith("./")}


# -- tests ----------------------------------------------------------------------------------------------------

def test_the_checker_knows_the_exported_names_and_catches_a_wrong_one() -> None:
    known = exported_series()
    assert {"carecast_http_requests_total", "carecast_http_request_duration_seconds_bucket",
            "carecast_drift_alerts_total", "carecast_scoring_queue_depth", "carecast_live_streams"} <= known
    assert "carecast_http_requests" not in known  # a counter is scraped with its _total suffix
    wrong = unknown_names(["rate(carecast_http_request_total[5m])", "carecast_scoring_queue_depth > 1"], known)
    assert wrong == {"rate(carecast_http_request_total[5m])": {"carecast_http_request_total"}}


def test_alert_rules_parse_cover_the_brief_and_use_exported_metrics() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["labels"]["team"] in ("operations", "data-science"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert _NAME.search(rule["expr"]), f"{rule['alert']} reads no CareCast metric"
    assert unknown_names([r["expr"] for r in rules], exported_series()) == {}


def test_the_dashboard_parses_uses_exported_metrics_and_shows_every_metric() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)) and board["uid"] == "carecast-overview"
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
    expressions = dashboard_expressions()
    assert unknown_names(expressions, exported_series()) == {}
    shown = {name for expr in expressions for name in _NAME.findall(expr)}
    for family, kind in metric_families().items():
        assert any(family + s in shown for s in SUFFIXES[kind]), f"{family} is not on the dashboard"
    assert scrape_time_gauges() <= shown


def test_compose_mounts_the_rules_and_the_dashboard_where_the_configuration_reads_them() -> None:
    config = load_yaml(PROMETHEUS)
    prometheus = mounts("prometheus")
    assert [prometheus[path] for path in config["rule_files"]] == [ALERTS]
    grafana = mounts("grafana")
    provider = load_yaml(PROVIDER)["providers"][0]
    assert grafana[provider["options"]["path"]] == DASHBOARD.parent
    assert grafana["/etc/grafana/provisioning"] == PROVIDER.parents[1]
    # the worker container serves its metrics where Prometheus scrapes them
    worker = load_yaml(COMPOSE)["services"]["worker"]["command"]
    port = worker[worker.index("--metrics-port") + 1]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "carecast-worker")
    assert job["static_configs"][0]["targets"] == [f"worker:{port}"]


@needs_promtool
def test_promtool_checks_the_rules_and_the_configuration(tmp_path: Path) -> None:
    rules = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # the configuration as the container sees it: mounted paths replaced by their files, a stand-in token
    text = PROMETHEUS.read_text(encoding="utf-8")
    for container, host in mounts("prometheus").items():
        if container == "/etc/prometheus/secrets":
            host = tmp_path / "secrets"
            host.mkdir()
            (host / "prometheus.token").write_text("stand-in\n")
        text = text.replace(container, str(host))
    (tmp_path / "prometheus.yml").write_text(text)
    config = subprocess.run([str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def _rule_tests(rules_file: Path) -> dict[str, Any]:
    page_ops = {"severity": "page", "team": "operations"}
    return {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            {"series": 'carecast_scoring_failures_total{job="carecast-worker"}', "values": "0+1x40"},
            {"series": 'up{job="carecast-api"}', "values": "1x90"},
            {"series": 'carecast_predictions_total{job="carecast-api",task="deterioration_24h",source="live"}',
             "values": "0+10x20 200x70"},  # scores for 20 minutes, then none
            {"series": 'carecast_ingested_records_total{job="carecast-api",source="fhir",outcome="accepted"}',
             "values": "0+100x90"},
            {"series": 'carecast_ingested_records_total{job="carecast-api",source="fhir",outcome="rejected"}',
             "values": "0+10x90"},  # 10 of every 110: 9 % refused
            {"series": 'carecast_ingested_records_total{job="carecast-api",source="wearable",outcome="accepted"}',
             "values": "0+100x90"},
            {"series": 'carecast_drift_alerts_total{job="carecast-api",task="deterioration_24h",model_version="v1"}',
             "values": "0x30 1x60"},
        ], "alert_rule_test": [
            {"eval_time": "20m", "alertname": "CareCastScoringFailures",
             "exp_alerts": [{"exp_labels": {**page_ops, "job": "carecast-worker"}}]},
            {"eval_time": "30m", "alertname": "CareCastNoPredictions", "exp_alerts": []},  # the last 30 min scored
            {"eval_time": "60m", "alertname": "CareCastNoPredictions", "exp_alerts": [{"exp_labels": page_ops}]},
            {"eval_time": "60m", "alertname": "CareCastRejectedRecordShare", "exp_alerts": [
                {"exp_labels": {"severity": "ticket", "team": "operations", "source": "fhir"}}]},
            {"eval_time": "20m", "alertname": "CareCastDriftAlert", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "CareCastDriftAlert", "exp_alerts": [{"exp_labels": {
                "severity": "ticket", "team": "data-science", "job": "carecast-api", "task": "deterioration_24h",
                "model_version": "v1"}}]},
        ]},
        {"interval": "1m", "input_series": [
            {"series": 'carecast_scoring_failures_total{job="carecast-worker"}', "values": "0x40"},
        ], "alert_rule_test": [{"eval_time": "30m", "alertname": "CareCastScoringFailures", "exp_alerts": []}]},
    ]}


@needs_promtool
def test_promtool_fires_the_rules_on_made_up_series(tmp_path: Path) -> None:
    # Annotations are templates checked by `check rules`; without them an expected alert is its labels alone.
    stripped = load_yaml(ALERTS)
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(stripped))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(_rule_tests(tmp_path / "rules.yml")))
    out = subprocess.run([str(PROMTOOL), "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
