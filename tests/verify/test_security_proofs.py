"""`make verify`: the security figures of issue 8 at full size, each printing the figure it proves (run with -s).

Figure 3 (authorization matrix, with the session and bearer credentials crossed too), 4 (audit, 20 rounds),
5 (an invalid last entry after 1,000 resources), 6 (10,000 records replayed three times through the API and
through `carecast ingest`) and 11 (authentication negatives). Their fast versions are in
tests/unit/serving/test_security_*.py, whose helpers these reuse. Both backends, as every store test.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from carecast.cli import main
from carecast.store import Store
from tests import factories as F
from tests.unit.security.test_cds_jwt import ec_signer, register
from tests.unit.serving import conftest as serving
from tests.unit.serving import test_security_matrix as matrix
from tests.unit.serving.conftest import Hospital, bearer
from tests.unit.serving.test_security_authn import negative_credentials, refusals
from tests.unit.serving.test_security_matrix import World, run_matrix
from tests.unit.serving.test_security_records import (
    BOOKKEEPING,
    audit_census,
    bad_last_entry_bundle,
    observation_count,
    readings,
    replay_through_api,
    table_counts,
)

N = 10_000
# The serving tests' fixtures (an app over the test store, the seeded hospital, a token per role), used here too.
app, client, hospital, predictor, queue, registry, tokens = (serving.app, serving.client, serving.hospital,
                                                             serving.predictor, serving.queue, serving.registry,
                                                             serving.tokens)
world, generous_limits = matrix.world, matrix.generous_limits
_fast_password_hashing = serving._fast_password_hashing


def test_figure_3_authorization(app: Flask, store: Store, world: World, tokens: dict[str, str],
                                generous_limits: None, backend: str) -> None:
    direct = run_matrix(app, store, world, tokens)
    crossed = run_matrix(app, store, world, tokens, crossed=True)
    cases = direct.cases + crossed.cases
    wrong = len(direct.wrongly_allowed) + len(crossed.wrongly_allowed)
    print(f"\nfigure 3 ({backend}): {cases:,} endpoint x verb x role (x other unit, x crossed credentials) cases, "
          f"{wrong} wrongly allowed, {len(direct.wrongly_denied) + len(crossed.wrongly_denied)} wrongly denied, "
          f"{len(direct.audit_problems) + len(crossed.audit_problems)} audit faults")
    assert not direct.problems and not crossed.problems, "\n".join(direct.problems + crossed.problems)


def test_figure_4_audit(client: FlaskClient, store: Store, hospital: Hospital, tokens: dict[str, str],
                        generous_limits: None, backend: str) -> None:
    found = audit_census(client, store, hospital, tokens, repeat=20)
    print(f"\nfigure 4 ({backend}): {found['reads']} patient-data reads -> {found['read_rows']} audit rows; "
          f"{found['refusals']} refusals -> {found['refusal_rows']} rows; {found['probes']} health/metrics/static "
          f"requests -> {found['probe_rows']} rows")
    assert found["read_rows"] == found["reads"] and found["refusal_rows"] == found["refusals"]
    assert found["probe_rows"] == 0


def test_figure_5_transactions(client: FlaskClient, store: Store, hospital: Hospital, tokens: dict[str, str],
                               backend: str) -> None:
    before = table_counts(store)
    response = client.post("/api/v1/ingest/fhir", data=orjson.dumps(bad_last_entry_bundle(333)),
                           content_type="application/fhir+json", headers=bearer(tokens["nurse"]))
    after = table_counts(store)
    changed = sum(abs(after[t] - before[t]) for t in before if t not in BOOKKEEPING)
    print(f"\nfigure 5 ({backend}): transaction of {333 * 3 + 1} entries with an invalid last one -> "
          f"{response.status_code}, {changed} rows changed in {len(before) - len(BOOKKEEPING)} data tables")
    assert response.status_code == 422 and changed == 0


def test_figure_6_idempotence(client: FlaskClient, store: Store, hospital: Hospital, tokens: dict[str, str],
                              database_url: str, tmp_path: Path, generous_limits: None, backend: str) -> None:
    base = observation_count(store)
    body = readings(N)
    replay_through_api(client, tokens["nurse"], body)
    through_api = observation_count(store) - base
    data = tmp_path / "readings.ndjson"
    data.write_bytes(body)
    env = {"CARECAST_DATA_DIR": str(tmp_path / "cli"), "CARECAST_DATABASE_URL": database_url}
    # the CLI has its own key (its own record keys): it stores the patients and readings once more, then never
    seed = tmp_path / "seed.json"
    seed.write_bytes(orjson.dumps(F.bundle([
        F.patient("a1"), F.encounter("ea1", "a1", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.patient("a2"), F.encounter("ea2", "a2", units=(("Ward A", "2026-01-05T08:00:00Z"),)),
        F.patient("b1"), F.encounter("eb1", "b1", units=(("Ward B", "2026-01-05T08:00:00Z"),))])))
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(seed)], env=env).exit_code == 0
    cli_base = observation_count(store)
    for _ in range(3):
        assert runner.invoke(main, ["ingest", str(data)], env=env).exit_code == 0
    through_cli = observation_count(store) - cli_base
    print(f"\nfigure 6 ({backend}): {N:,} records imported 3 times -> {through_api:,} stored through the API, "
          f"{through_cli:,} through `carecast ingest`")
    assert through_api == N and through_cli == N


def test_figure_11_authentication_negatives(app: Flask, client: FlaskClient, store: Store,
                                            tokens: dict[str, str], generous_limits: None, backend: str) -> None:
    ehr = ec_signer()
    register(store, ehr)
    credentials = negative_credentials(store, ehr)
    cases, problems = refusals(client, store, credentials)
    print(f"\nfigure 11 ({backend}): {len(credentials)} kinds of bad or missing credential x 5 endpoints (API, "
          f"metrics, CDS Hooks) = {cases} cases, {cases - len(problems)} answered 401 and audited once")
    assert not problems, "\n".join(problems)
