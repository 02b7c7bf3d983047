"""score_patient on SQLite and PostgreSQL: the training features, one stored row per data time and model,
reads of the latest risk and of the trajectory."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from carecast.errors import NotFoundError
from carecast.features.builder import BEDSIDE_SOURCES, build_features
from carecast.scoring.predictor import Predictor
from carecast.scoring.scorer import (
    current_risks,
    latest_predictions,
    risk_trajectories,
    risk_trajectory,
    score_patient,
    score_patients,
)
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.frames import load_frames
from tests.unit.scoring import TASK, TrainedModels, ingest, patient_ids, registry_copy, small_hospital


@pytest.fixture
def predictor(models: TrainedModels, tmp_path: Path) -> Predictor:
    return Predictor(registry_copy(models, tmp_path / "models"), challengers=True)


@pytest.fixture
def hospital(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    ingest(store, small_hospital(tmp_path_factory))
    return store


def _count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(S.Prediction)).scalar_one())


def test_scores_once_per_data_time(hospital: Store, predictor: Predictor, models: TrainedModels) -> None:
    pid = patient_ids(hospital)[0]
    first = score_patient(hospital, predictor, pid)
    assert len(first) == 1 and first[0].created
    p = first[0]
    assert (p.task, p.model_version, p.shadow) == (TASK, models.champion, False)
    assert p.patient_uid and p.band in ("low", "medium", "high") and 0 <= p.risk <= 1

    # the data time is the latest bedside reading, and the risk is the model's on the training features
    frames = load_frames(hospital.engine, hospital.keyring)
    obs = frames.observations[frames.observations["patient_id"] == pid]
    assert p.data_time == obs.loc[obs["source"].isin(BEDSIDE_SOURCES), "effective_at"].max().to_pydatetime()
    X = build_features(frames, pd.DataFrame({"patient_id": [pid], "encounter_id": [p.encounter_id],
                                             "t": [pd.Timestamp(p.data_time)]}))
    assert p.risk == pytest.approx(predictor.model(TASK).estimator.predict_proba(X)[0, 1], abs=1e-6)
    assert p.news2 == int(X["news2_total"].iloc[0])
    assert p.factors and all({"feature", "contribution", "value", "text"} <= set(f) for f in p.factors)

    again = score_patient(hospital, predictor, pid)
    assert _count(hospital) == 1
    assert len(again) == 1 and not again[0].created
    assert (again[0].id, again[0].risk, again[0].factors) == (p.id, p.risk, p.factors)

    latest = latest_predictions(hospital.engine, pid)
    assert set(latest) == {TASK} and latest[TASK].id == p.id and latest[TASK].unit == p.unit


def test_trajectory_and_the_newest_model_wins(hospital: Store, predictor: Predictor, models: TrainedModels) -> None:
    pid = patient_ids(hospital)[1]
    now = score_patient(hospital, predictor, pid)[0]
    earlier = score_patient(hospital, predictor, pid, at=now.data_time - timedelta(hours=3))[0]
    assert earlier.data_time < now.data_time

    predictor.registry.promote(TASK, models.other)
    predictor.refresh()
    newer = score_patient(hospital, predictor, pid)[0]
    assert newer.created and newer.model_version == models.other and newer.data_time == now.data_time
    assert _count(hospital) == 3

    trajectory = risk_trajectory(hospital.engine, pid, TASK)
    assert [p.id for p in trajectory] == [earlier.id, newer.id]  # one point per data time, newest model
    assert [p.id for p in risk_trajectory(hospital.engine, pid, TASK, since=now.data_time)] == [newer.id]
    assert latest_predictions(hospital.engine, pid)[TASK].id == newer.id
    assert current_risks(hospital.engine, TASK)[pid].id == newer.id
    assert set(current_risks(hospital.engine, TASK, [pid])) == {pid}  # the same statement, reused with other values
    assert current_risks(hospital.engine, TASK, []) == {} and current_risks(hospital.engine, "no_such_task") == {}
    assert latest_predictions(hospital.engine, patient_ids(hospital)[3]) == {}  # not scored

    # several patients in one query, each in its own window: the same points as one by one
    other = patient_ids(hospital)[2]
    score_patient(hospital, predictor, other)
    windows = {pid: (now.data_time - timedelta(hours=4), now.data_time),
               other: (now.data_time - timedelta(days=30), now.data_time + timedelta(days=30))}
    together = risk_trajectories(hospital.engine, TASK, windows)
    for patient, (since, until) in windows.items():
        assert [p.id for p in together[patient]] == [
            p.id for p in risk_trajectory(hospital.engine, patient, TASK, since, until=until)]
    assert [p.id for p in together[pid]] == [earlier.id, newer.id] and together[other]
    narrow = risk_trajectories(hospital.engine, TASK, {pid: (now.data_time, now.data_time)})
    assert [p.id for p in narrow[pid]] == [newer.id]


def test_shadow_challenger_is_stored_but_not_shown(hospital: Store, predictor: Predictor,
                                                   models: TrainedModels) -> None:
    predictor.registry.promote(TASK, models.other, alias="challenger")
    predictor.refresh()
    pid = patient_ids(hospital)[2]
    stored = score_patient(hospital, predictor, pid, shadow_challenger=True)
    assert sorted((p.model_version, p.shadow) for p in stored) == sorted(
        [(models.champion, False), (models.other, True)])
    assert latest_predictions(hospital.engine, pid)[TASK].model_version == models.champion
    assert len(latest_predictions(hospital.engine, pid, include_shadow=True)) == 1

    # the challenger is promoted: its shadow row of the same data becomes the shown one, not a duplicate
    predictor.registry.promote(TASK, models.other)
    predictor.refresh()
    (promoted,) = score_patient(hospital, predictor, pid)
    assert promoted.model_version == models.other and not promoted.shadow and not promoted.created
    assert latest_predictions(hospital.engine, pid)[TASK].model_version == models.other
    assert _count(hospital) == 2


def test_unknown_patient_and_unknown_task(hospital: Store, predictor: Predictor) -> None:
    with pytest.raises(NotFoundError) as err:
        score_patient(hospital, predictor, 987654)
    assert "987654" not in str(err.value)
    with pytest.raises(NotFoundError):
        score_patient(hospital, predictor, patient_ids(hospital)[0], tasks=["readmission_30d"])
    assert _count(hospital) == 0


def test_one_patient_alone_gets_the_features_of_the_whole_hospital(hospital: Store, predictor: Predictor) -> None:
    """Serving loads one patient's frames (some with no imaging report or no diagnosis); training builds
    features over everyone at once. The two must agree."""
    stored = [p for pid in patient_ids(hospital) for p in score_patient(hospital, predictor, pid)]
    assert len(stored) == len(patient_ids(hospital))
    everyone = load_frames(hospital.engine, hospital.keyring)
    queries = pd.DataFrame({"patient_id": [p.patient_id for p in stored],
                            "encounter_id": [p.encounter_id for p in stored],
                            "t": [pd.Timestamp(p.data_time) for p in stored]})
    expected = predictor.model(TASK).estimator.predict_proba(build_features(everyone, queries))[:, 1]
    assert [p.risk for p in stored] == pytest.approx(list(expected), abs=1e-6)
    without_reports = set(queries["patient_id"]) - set(everyone.reports["patient_id"])
    assert without_reports  # the case that needs care is covered


def test_a_batch_scores_each_patient_as_scoring_it_alone_would(hospital: Store, predictor: Predictor) -> None:
    pids = patient_ids(hospital)
    batch = score_patients(hospital, predictor, [*pids, 987654], shadow_challenger=True)
    assert isinstance(batch[987654], NotFoundError)
    stored = {pid: found for pid, found in batch.items() if pid != 987654}
    assert all(isinstance(found, list) for found in stored.values())
    assert sum(len(found) for found in stored.values()) == _count(hospital)  # type: ignore[arg-type]
    for pid in pids:
        alone = score_patient(hospital, predictor, pid, shadow_challenger=True)
        together = stored[pid]
        assert isinstance(together, list)
        # the same rows: nothing new stored by the single-patient call, same risk, time, model and factors
        assert not any(p.created for p in alone)
        assert [(p.id, p.task, p.model_version, p.shadow, p.data_time, p.risk, p.news2, p.factors) for p in alone] \
            == [(p.id, p.task, p.model_version, p.shadow, p.data_time, p.risk, p.news2, p.factors) for p in together]
    again = score_patients(hospital, predictor, pids)
    assert not any(p.created for found in again.values() for p in found)  # type: ignore[union-attr]


def test_predictions_are_committed_in_id_order(hospital: Store, predictor: Predictor) -> None:
    """Readers take the rows after the last id they saw, so a row may not become visible after a higher id:
    a transaction storing predictions waits for another one to commit (PostgreSQL hands out ids at insert;
    SQLite's one writer commits in order by itself)."""
    import threading

    from carecast.scoring.scorer import _in_id_order

    first, second = patient_ids(hospital)[:2]
    done = threading.Event()
    stored: list[int] = []

    def score_second() -> None:
        stored.extend(p.id for p in score_patient(hospital, predictor, second))
        done.set()

    if hospital.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers itself")
    with hospital.engine.begin() as conn:  # another scoring transaction, not yet committed
        _in_id_order(conn)
        conn.execute(S.table(S.Prediction).insert().values(
            patient_id=first, encounter_id=None, task=TASK, model_version="held", risk=0.5, band="medium",
            news2=None, factors="[]", data_time=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
            computed_at=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(), shadow=False))
        held = int(conn.execute(select(func.max(S.Prediction.id))).scalar_one())
        thread = threading.Thread(target=score_second, daemon=True)
        thread.start()
        assert not done.wait(1.0), "a second transaction stored predictions while the first was open"
    thread.join(30)
    assert done.is_set() and stored and min(stored) > held
