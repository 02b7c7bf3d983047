"""The de-identifier as a pure function: rules and hypothesis properties."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecast.errors import InputError
from carecast.security.deid import age_label, deidentify, restricted_zip3

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
# Identifier values: random, and marked so that a match in the output is the value itself, never a column
# name, a surrogate id or a number that happens to contain the same letters (hypothesis found "encounte").
ident = st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=122), min_size=8, max_size=24).map(
    lambda text: f"ID#{text}")
moments = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
births = st.dates(min_value=datetime(1900, 1, 1).date(), max_value=datetime(2020, 1, 1).date())
# Births ending years before the first event, so that no event date, moved by at most a year in "shift" mode,
# can spell one: a birth date found in the output is then the birth date itself (a shifted admission once
# landed on a drawn birth date and failed the leak check by coincidence).
births_before_events = st.dates(min_value=datetime(1900, 1, 1).date(), max_value=datetime(1985, 12, 31).date())


def _frames(pids: list[int], birth: list[str], times: list[datetime], secrets_: list[str]) -> dict[str, pd.DataFrame]:
    n = len(pids)
    patients = pd.DataFrame({"patient_id": pids, "sex": ["female"] * n, "state": ["OH"] * n,
                             "birth_date": birth, "postal_code": ["90412"] * n, "deceased_at": [None] * n,
                             "family_name": secrets_[:n], "mrn": secrets_[:n], "ssn": secrets_[:n]})
    encounters = pd.DataFrame({"encounter_id": [p * 10 for p in pids], "patient_id": pids,
                               "admitted_at": times[:n], "unit": ["ICU"] * n, "bed": secrets_[:n]})
    observations = pd.DataFrame({"patient_id": [pids[i % n] for i in range(len(times))],
                                 "encounter_id": [pids[i % n] * 10 for i in range(len(times))],
                                 "variable": ["heart_rate"] * len(times), "value": [80.0] * len(times),
                                 "effective_at": times, "comment": [secrets_[i % n] for i in range(len(times))]})
    return {"patients": patients, "encounters": encounters, "observations": observations}


def _dump(result: object) -> str:
    tables = result.tables  # type: ignore[attr-defined]
    return "\n".join(df.to_csv(index=False) for df in tables.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 5), mode=st.sampled_from(["year", "shift"]))
def test_random_identifiers_never_survive(data: st.DataObject, n: int, mode: str) -> None:
    pids = data.draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    secrets_ = data.draw(st.lists(ident, min_size=n, max_size=n))
    times = data.draw(st.lists(moments, min_size=n, max_size=3 * n))
    birth = [b.isoformat() for b in data.draw(st.lists(births_before_events, min_size=n, max_size=n))]
    out = _dump(deidentify(_frames(pids, birth, times, secrets_), dates=mode, as_of=AS_OF))
    for secret in secrets_:
        assert secret not in out
    for b in birth:
        assert b not in out  # birth dates never leave, in either mode


@settings(max_examples=60, deadline=None)
@given(times=st.lists(moments, min_size=1, max_size=8))
def test_year_mode_dates_are_never_finer_than_a_year(times: list[datetime]) -> None:
    result = deidentify(_frames([1], ["1980-03-04"], times, ["x" * 8]), dates="year", as_of=AS_OF)
    got = result.tables["observations"]["effective_at"].tolist()
    assert sorted(got) == sorted(t.year for t in times)
    assert not re.search(r"\d{4}-\d{2}", _dump(result))


@settings(max_examples=60, deadline=None)
@given(times=st.lists(moments, min_size=2, max_size=8), shift=st.integers(1, 400))
def test_shifted_dates_keep_intervals_within_a_patient(times: list[datetime], shift: int) -> None:
    result = deidentify(_frames([7], ["1980-03-04"], times, ["y" * 8]), dates="shift", max_shift_days=shift,
                        as_of=AS_OF)
    got = sorted(pd.to_datetime(result.tables["observations"]["effective_at"], utc=True, format="ISO8601"))
    want = sorted(pd.Timestamp(t) for t in times)
    offsets = {g - w for g, w in zip(got, want, strict=True)}
    assert len(offsets) == 1  # one offset for the whole patient
    offset = offsets.pop()
    assert offset != timedelta(0) and abs(offset) <= timedelta(days=shift)
    assert offset % timedelta(days=1) == timedelta(0)


@settings(max_examples=80, deadline=None)
@given(born=births, at=moments)
def test_ages_over_89_are_grouped(born: object, at: datetime) -> None:
    b = pd.Timestamp(str(born), tz=UTC)
    frames = _frames([1], [str(born)], [at], ["z" * 8])
    result = deidentify(frames, dates="year", as_of=AS_OF)
    age = at.year - b.year - ((at.month, at.day) < (b.month, b.day))
    label = result.tables["encounters"]["age_at_admission"].iloc[0]
    if age < 0:
        return
    assert label == ("90+" if age > 89 else str(age))
    now_age = AS_OF.year - b.year - ((AS_OF.month, AS_OF.day) < (b.month, b.day))
    birth_year = result.tables["patients"]["birth_year"].iloc[0]
    assert birth_year == (None if now_age > 89 else b.year)
    assert result.tables["patients"]["age"].iloc[0] == age_label(now_age)


@settings(max_examples=40, deadline=None)
@given(pids=st.lists(st.integers(1, 10**6), min_size=2, max_size=6, unique=True))
def test_surrogates_are_random_and_unlinkable(pids: list[int]) -> None:
    frames = _frames(pids, ["1970-01-01"] * len(pids), [AS_OF] * len(pids), ["q" * 8] * len(pids))
    first = deidentify(frames, as_of=AS_OF).tables["patients"]["patient_id"].tolist()
    second = deidentify(frames, as_of=AS_OF).tables["patients"]["patient_id"].tolist()
    assert len(set(first)) == len(pids)
    assert not set(first) & set(second)  # the same patient gets a new surrogate in each export
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) for s in first)
    assert not {str(p) for p in pids} & set(first)


def test_references_stay_consistent_across_tables() -> None:
    frames = _frames([1, 2], ["1970-01-01", "1980-01-01"], [AS_OF, AS_OF - timedelta(days=1)], ["a" * 8, "b" * 8])
    t = deidentify(frames, as_of=AS_OF).tables
    assert set(t["encounters"]["patient_id"]) == set(t["patients"]["patient_id"])
    assert set(t["observations"]["encounter_id"]) <= set(t["encounters"]["encounter_id"])
    pairs = set(zip(t["encounters"]["encounter_id"], t["encounters"]["patient_id"], strict=True))
    assert set(zip(t["observations"]["encounter_id"], t["observations"]["patient_id"], strict=True)) <= pairs


@pytest.mark.parametrize(("postal", "zip3"), [("90412", "904"), ("03601", "000"), ("89301-1234", "000"),
                                              ("10001", "100"), ("ABCDE", None), (None, None)])
def test_zip_codes(postal: str | None, zip3: str | None) -> None:
    frames = {"patients": pd.DataFrame({"patient_id": [1], "postal_code": [postal]})}
    assert deidentify(frames, as_of=AS_OF).tables["patients"]["zip3"].iloc[0] == zip3


def test_restricted_zip_list_is_the_hhs_list() -> None:
    assert restricted_zip3() == {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830",
                                 "831", "878", "879", "884", "890", "893"}


@pytest.mark.parametrize("value", ["call 555-123-4567", "a@b.example", "http://x.example/p", "10.1.2.3",
                                   "123-45-6789", "seen 2026-01-05", "Dr Who\n", ""])
def test_identifier_looking_codes_are_suppressed(value: str) -> None:
    frames = {"encounters": pd.DataFrame({"encounter_id": [1], "patient_id": [1], "unit": [value]})}
    result = deidentify(frames, as_of=AS_OF)
    assert result.tables["encounters"]["unit"].iloc[0] is None
    assert result.manifest["tables"]["encounters"]["suppressed_values"] == {"unit": 1}


def test_codes_and_units_pass_the_screen() -> None:
    frames = {"observations": pd.DataFrame({
        "patient_id": [1, 1], "variable": ["heart_rate", "spo2"], "code_system": ["http://loinc.org", "loinc"],
        "code": ["8867-4", "59408-5"], "unit": ["/min", "%"], "value": [80, 97]})}
    t = deidentify(frames, as_of=AS_OF).tables["observations"]
    assert t["unit"].tolist() == ["/min", "%"] and t["code"].tolist() == ["8867-4", "59408-5"]
    assert t["code_system"].tolist() == ["http://loinc.org", "loinc"]


def test_unknown_columns_are_dropped_and_listed() -> None:
    frames = _frames([1], ["1970-01-01"], [AS_OF], ["secretvalue"])
    manifest = deidentify(frames, as_of=AS_OF).manifest
    assert manifest["tables"]["patients"]["dropped_columns"] == ["family_name", "mrn", "ssn"]
    assert "secretvalue" not in str(manifest)


def test_bad_options_and_tables_are_refused() -> None:
    with pytest.raises(InputError):
        deidentify({}, dates="month")
    with pytest.raises(InputError):
        deidentify({"users": pd.DataFrame()})
