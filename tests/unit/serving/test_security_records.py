"""Figures 4, 5 and 6 (fast versions; the long ones are in tests/verify/test_security_proofs.py).

4. Audit: exactly one audit row per patient-data access and per refusal; none for /livez, /readyz, /metrics
   scrapes and static files; changing one row makes `carecast audit verify` exit non-zero.
5. Transactions: an invalid last entry in a transaction bundle changes 0 rows of any table.
6. Idempotence: replaying an import three times (API ingest and `carecast ingest`) leaves each record once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from carecast.cli import main
from carecast.security.audit import flush_spools
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.store import Store
from carecast.store import schema as S
from tests import factories as F

from .conftest import PASSWORD, Hospital, audit_rows, bearer

# audit_spool is the audit trail's own bookkeeping (how far each spool file is shipped)
COUNTED = tuple(t for t in S.Base.metadata.sorted_tables if t.name != "audit_spool")
# Tables an ingest writes by design even when it stores nothing: its batch, its quarantined entries, the audit row.
BOOKKEEPING = ("ingest_batches", "ingest_records", "audit_events")


def table_counts(store: Store) -> dict[str, int]:
    flush_spools(store.engine)
    with store.engine.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in COUNTED}


def observation_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(S.Observation)).scalar_one())


# -- figure 4: audit -----------------------------------------------------------------------------------------

def patient_reads(hospital: Hospital) -> list[str]:
    a1 = hospital.uids["a1"]
    return [f"/api/v1/patients/{a1}", f"/api/v1/patients/{a1}/observations", f"/api/v1/patients/{a1}/imaging",
            f"/api/v1/patients/{a1}/predictions", f"/api/v1/patients/{a1}/risk-assessment",
            f"/api/v1/patients/{a1}/predictions/deterioration_24h/trajectory", "/api/v1/patients"]


def audit_census(client: FlaskClient, store: Store, hospital: Hospital, tokens: dict[str, str],
                 repeat: int = 1) -> dict[str, int]:
    """Counts of requests and of the audit rows they left, by kind: reads, refusals, unaudited probes."""
    scrape = issue_token(store.engine, create_user(store.engine, "scraper", PASSWORD, "admin"), "scrape",
                         ["metrics:read"], ttl_hours=1)
    b1 = hospital.uids["b1"]
    out = {"reads": 0, "read_rows": 0, "refusals": 0, "refusal_rows": 0, "probes": 0, "probe_rows": 0}
    for _ in range(repeat):
        for path in patient_reads(hospital):
            before = len(audit_rows(store))
            assert client.get(path, headers=bearer(tokens["clinician"])).status_code == 200, path
            rows = audit_rows(store)[before:]
            out["reads"] += 1
            out["read_rows"] += sum(1 for r in rows if r.outcome == "success")
            assert len(rows) == 1, (path, [r.action for r in rows])
        for path, headers, status in ((f"/api/v1/patients/{b1}", bearer(tokens["nurse"]), 403),
                                      ("/api/v1/patients", bearer(tokens["auditor"]), 403),
                                      ("/api/v1/patients", {}, 401), ("/api/v1/patients", bearer("cc_forged"), 401),
                                      ("/ui/ward", {"Accept": "text/html"}, 302)):
            before = len(audit_rows(store))
            assert client.get(path, headers=headers).status_code == status, path
            rows = audit_rows(store)[before:]
            out["refusals"] += 1
            out["refusal_rows"] += sum(1 for r in rows if r.outcome == "denied")
            assert len(rows) == 1, (path, [r.action for r in rows])
        for path, headers in (("/livez", {}), ("/readyz", {}), ("/metrics", bearer(scrape)),
                              ("/ui/static/ui.css", {}), ("/ui/static/ui.js", {}), ("/api/v1/openapi.json", {})):
            before = len(audit_rows(store))
            response = client.get(path, headers=headers)
            assert response.status_code in (200, 503), path
            response.close()
            out["probes"] += 1
            out["probe_rows"] += len(audit_rows(store)) - before
    return out


def test_one_audit_row_per_access_and_refusal_none_for_probes(client: FlaskClient, store: Store,
                                                              hospital: Hospital, tokens: dict[str, str]) -> None:
    found = audit_census(client, store, hospital, tokens)
    assert found["read_rows"] == found["reads"] and found["refusal_rows"] == found["refusals"]
    assert found["probe_rows"] == 0


def test_editing_one_audit_row_breaks_the_cli_verify(client: FlaskClient, store: Store, database_url: str,
                                                     hospital: Hospital, tokens: dict[str, str],
                                                     tmp_path: Path) -> None:
    for path in patient_reads(hospital):
        client.get(path, headers=bearer(tokens["clinician"]))
    env = {"CARECAST_DATA_DIR": str(tmp_path / "cli"), "CARECAST_DATABASE_URL": database_url}
    intact = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert intact.exit_code == 0 and "intact" in intact.output
    rows = audit_rows(store)
    target = rows[len(rows) // 2]
    with store.engine.begin() as conn:  # an insider changing who read the record
        conn.execute(update(S.AuditEvent).where(S.AuditEvent.id == target.id).values(username="someone-else"))
    broken = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert broken.exit_code != 0 and f"BROKEN at row {target.id}" in broken.output


# -- figure 5: transactions ----------------------------------------------------------------------------------

def bad_last_entry_bundle(n: int) -> dict[str, Any]:
    """A transaction of new patients, stays and readings whose very last entry has an impossible unit."""
    resources: list[dict[str, Any]] = []
    for i in range(n):
        resources += [F.patient(f"t{i}"), F.encounter(f"et{i}", f"t{i}", units=(("Ward A", "2026-01-07T08:00:00Z"),)),
                      F.vital(f"ot{i}", "8867-4", 88, "/min", pid=f"t{i}", eid=f"et{i}")]
    resources.append(F.vital("ot-last", "8867-4", 88, "/parsec", pid="t0", eid="et0"))
    return F.bundle(resources)


def test_an_invalid_last_entry_changes_no_row(client: FlaskClient, store: Store, hospital: Hospital,
                                              tokens: dict[str, str]) -> None:
    before = table_counts(store)
    response = client.post("/api/v1/ingest/fhir", data=orjson.dumps(bad_last_entry_bundle(20)),
                           content_type="application/fhir+json", headers=bearer(tokens["nurse"]))
    assert response.status_code == 422
    after = table_counts(store)
    changed = {t for t in before if before[t] != after[t]}
    assert changed <= set(BOOKKEEPING), changed
    assert after["audit_events"] == before["audit_events"] + 1


# -- figure 6: idempotence -----------------------------------------------------------------------------------

def readings(n: int, patients: int = 50) -> bytes:
    """n wearable-free FHIR Observations (NDJSON) of seeded stays, one a minute per patient."""
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    lines = []
    for k in range(n):
        pid = ("a1", "a2", "b1")[k % 3]
        when = (start + timedelta(minutes=k // 3)).isoformat().replace("+00:00", "Z")
        lines.append(orjson.dumps(F.vital(f"idem{k}", "8867-4", 60 + k % 80, "/min", pid=pid,
                                          eid={"a1": "ea1", "a2": "ea2", "b1": "eb1"}[pid], when=when)))
    return b"\n".join(lines) + b"\n"


def replay_through_api(client: FlaskClient, token: str, body: bytes, times: int = 3) -> list[dict[str, Any]]:
    answers = []
    for _ in range(times):
        response = client.post("/api/v1/ingest/ndjson", data=body, content_type="application/fhir+ndjson",
                               headers=bearer(token))
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        answers.append(response.json)
    return answers


def test_replaying_an_import_three_times_through_the_api_stores_it_once(client: FlaskClient, store: Store,
                                                                         hospital: Hospital,
                                                                         tokens: dict[str, str]) -> None:
    base = observation_count(store)
    answers = replay_through_api(client, tokens["nurse"], readings(1000))
    assert observation_count(store) - base == 1000
    assert [a["inserted"] for a in answers] == [1000, 0, 0] and [a["unchanged"] for a in answers[1:]] == [1000, 1000]


def test_replaying_an_import_three_times_through_the_cli_stores_it_once(store: Store, database_url: str,
                                                                         tmp_path: Path) -> None:
    env = {"CARECAST_DATA_DIR": str(tmp_path / "cli"), "CARECAST_DATABASE_URL": database_url}
    seed = tmp_path / "seed.json"
    seed.write_bytes(orjson.dumps(F.bundle([
        F.patient("a1"), F.encounter("ea1", "a1", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.patient("a2"), F.encounter("ea2", "a2", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.patient("b1"), F.encounter("eb1", "b1", units=(("Ward B", "2026-01-05T08:00:00Z"),))])))
    data = tmp_path / "readings.ndjson"
    data.write_bytes(readings(1000))
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(seed)], env=env).exit_code == 0
    for _ in range(3):
        result = runner.invoke(main, ["ingest", "--json", str(data)], env=env)
        assert result.exit_code == 0, result.output
    assert observation_count(store) == 1000
