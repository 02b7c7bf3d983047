"""Which encounter a patient is scored in: the plain-Python choice against the pandas statement of the rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from carecast.scoring.scorer import _encounter_rows, _moment, _moment_of, current_encounter

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _reference(encounters: pd.DataFrame, patient_id: int, t: datetime | None) -> pd.Series | None:
    """The rule as a few pandas filters and a sort (how it was written before the worker needed it faster)."""
    enc = encounters[encounters["patient_id"] == patient_id]
    if enc.empty:
        return None
    if t is not None:
        started = enc[enc["admitted_at"] <= pd.Timestamp(t)]
        enc = started if not started.empty else enc
        still_in = enc["discharged_at"].isna() | (enc["discharged_at"] >= pd.Timestamp(t))
    else:
        still_in = enc["discharged_at"].isna()
    pool = enc[still_in] if still_in.any() else enc
    return pool.sort_values(["admitted_at", "encounter_id"], kind="stable").iloc[-1]


def _time(rng: random.Random) -> datetime | None:
    return None if rng.random() < 0.15 else T0 + timedelta(hours=rng.choice([0, 6, 12, 24, 48, 72]))


def _encounters(rng: random.Random) -> pd.DataFrame:
    rows = []
    for pid in range(1, 6):
        for _ in range(rng.randint(0, 4)):
            admitted = _time(rng)
            discharged = None if rng.random() < 0.4 or admitted is None else admitted + timedelta(
                hours=rng.choice([0, 6, 30, 100]))
            rows.append({"patient_id": pid, "encounter_id": len(rows) + 1, "admitted_at": admitted,
                         "discharged_at": discharged, "unit": rng.choice(["Ward 4W", None, "ICU"])})
    frame = pd.DataFrame(rows, columns=["patient_id", "encounter_id", "admitted_at", "discharged_at", "unit"])
    for column in ("admitted_at", "discharged_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.sample(frac=1.0, random_state=rng.randint(0, 1000)).reset_index(drop=True)  # any row order


@pytest.mark.parametrize("seed", range(40))
def test_the_current_encounter_is_the_one_the_pandas_rule_picks(seed: int) -> None:
    rng = random.Random(seed)
    encounters = _encounters(rng)
    rows = _encounter_rows(encounters)
    for pid in range(0, 7):
        for t in (None, T0 - timedelta(hours=1), T0, T0 + timedelta(hours=12), T0 + timedelta(hours=31),
                  T0 + timedelta(days=30)):
            expected = _reference(encounters, pid, t)
            found = current_encounter(encounters, pid, t)
            if expected is None:
                assert found is None
                assert _moment_of(rows.get(pid, []), t) == (None, None, t)
                continue
            assert found is not None and int(found["encounter_id"]) == int(expected["encounter_id"])
            unit = expected["unit"] if isinstance(expected["unit"], str) else None
            at = t if t is not None else (None if pd.isna(expected["admitted_at"])
                                          else expected["admitted_at"].to_pydatetime())
            assert _moment_of(rows[pid], t) == (int(expected["encounter_id"]), unit, at)
            assert _moment(encounters, pid, t) == (int(expected["encounter_id"]), unit, at)
