"""Figure 14: static analysis of src/ with 0 high-severity findings: bandit, and semgrep with the project's own
rules (lint/semgrep.yml, offline). Each semgrep rule is shown to fire on code written to break it, so a rule
that silently matches nothing fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RULES = ROOT / "lint" / "semgrep.yml"


def _semgrep(target: Path) -> list[dict[str, object]]:
    out = subprocess.run([str(BIN / "semgrep"), "--metrics=off", "--disable-version-check", "--config", str(RULES),
                          "--json", "-q", str(target)], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    results: list[dict[str, object]] = json.loads(out.stdout)["results"]
    return results


def test_semgrep_finds_nothing_in_src() -> None:
    found = _semgrep(ROOT / "src")
    assert [(r["check_id"], r["path"], r["start"]) for r in found] == []  # type: ignore[index]


def test_every_semgrep_rule_fires_on_code_that_breaks_it() -> None:
    rules = {rule["id"] for rule in yaml.safe_load(RULES.read_text())["rules"]}
    fired = {str(r["check_id"]).rsplit(".", 1)[-1] for r in _semgrep(ROOT / "lint" / "fixtures")}
    assert rules - fired == set()


def test_bandit_finds_no_high_severity_issue() -> None:
    out = subprocess.run([str(BIN / "bandit"), "-q", "-r", str(ROOT / "src"), "-f", "json"], capture_output=True,
                         text=True, check=False)
    report = json.loads(out.stdout)
    high = [(r["test_id"], r["filename"], r["line_number"]) for r in report["results"]
            if r["issue_severity"] == "HIGH"]
    assert high == []
    assert report["metrics"]["_totals"]["loc"] > 10_000  # it did scan the code
