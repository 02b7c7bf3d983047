"""The population page: rates per 100,000 by state from the stored data or an uploaded CSV, drawn as bars
and a scatter with its least-squares line; audited once; for roles that may read models."""

from __future__ import annotations

import io
from collections.abc import Callable

from flask.testing import FlaskClient

from carecast.store import Store
from tests.unit.serving.conftest import Hospital, audit_count

from .conftest import HTML, actions, session_csrf

CSV = """State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population
NY,2021-01-01,1000,50,200,1000000
NY,2021-02-01,3000,90,400,1000000
CA,2021-02-01,4000,40,300,2000000
TX,2021-02-01,1500,30,100,500000
"""


def test_population_from_an_uploaded_csv(browser: Callable[[str], FlaskClient], store: Store) -> None:
    scientist = browser("data_scientist")
    before = audit_count(store)
    page = scientist.post("/ui/population", data={"csrf_token": session_csrf(scientist),
                                                  "file": (io.BytesIO(CSV.encode()), "states.csv")},
                          content_type="multipart/form-data", headers=HTML)
    assert page.status_code == 200, page.text[:500]
    text = page.text
    # NY: the latest cumulative figures (3000 cases) over the population once -> 300 per 100,000
    assert "300.0" in text and "9.0" in text
    assert text.count('class="bar"') == 9  # three rates for three states
    assert 'class="fit"' in text and "R² =" in text
    assert audit_count(store) == before + 1 and actions(store)[-1] == "population:read"


def test_population_from_the_store_and_who_may_see_it(browser: Callable[[str], FlaskClient],
                                                      hospital: Hospital) -> None:
    page = browser("clinician").get("/ui/population?codes=E11.9", headers=HTML)
    assert page.status_code == 200 and "ICD-10" in page.text
    assert browser("clinician").get("/ui/population?codes=not-a-code", headers=HTML).status_code == 422
    assert browser("nurse").get("/ui/population", headers=HTML).status_code == 403
