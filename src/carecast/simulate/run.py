"""Run the synthetic hospital into a directory: FHIR bulk NDJSON, wearables JSONL and the ground truth.

Files written (one compact JSON object per line):
    Patient.ndjson, Encounter.ndjson        final state of each resource, in order of first appearance
    Condition.ndjson, Observation.ndjson,   in the order they became known
    ImagingStudy.ndjson, DiagnosticReport.ndjson
    wearables.jsonl                          minute-rate device readings (docs/wearable-format.md)
    truth/risk.csv, truth/encounters.csv, truth/summary.json   what only the simulator knows
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from carecast.simulate.config import SimulationConfig
from carecast.simulate.hospital import RESOURCE_TYPES, WEARABLES, Hospital
from carecast.simulate.latent import DIED
from carecast.simulate.metrics import auroc, calibration_table
from carecast.simulate.plan import HospitalPlan
from carecast.simulate.wearables import WearableBatch

FILE_NAMES = {**{name: f"{name}.ndjson" for name in RESOURCE_TYPES}, WEARABLES: "wearables.jsonl"}
_SNAPSHOT_TYPES = ("Patient", "Encounter")  # resources that change: the files keep their last version


@dataclass(frozen=True)
class SimulationSummary:
    """What a run wrote and what happened in it (events counted inside the window only)."""

    out_dir: Path
    seed: int
    patients: int
    days: float
    shift: str | None
    counts: dict[str, int] = field(default_factory=dict)  # lines per file, by resource type / "wearables"
    n_admissions: int = 0
    n_deaths: int = 0
    n_icu_transfers: int = 0
    n_readmissions: int = 0
    n_deteriorations: int = 0  # admissions with an ICU transfer or a ward death
    n_prediction_points: int = 0  # ward vitals sets in truth/risk.csv
    deterioration_24h_rate: float = 0.0  # share of prediction points followed by deterioration within 24 h
    mean_true_risk_24h: float = 0.0
    best_auroc_deterioration_24h: float = math.nan  # AUROC of the true risk: the ceiling for any model

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["counts"] = dict(self.counts)
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        return out


def simulate(config: SimulationConfig, out_dir: Path, progress: Callable[[int], None] | None = None
             ) -> SimulationSummary:
    """Simulate `config` into `out_dir` (created if needed; existing files of the same names are replaced).

    `progress`, if given, is called with increments of patients seen so far (summing to
    `config.patients`), which suits `tqdm(total=config.patients).update`.
    """
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    hospital = Hospital(config)
    counts = dict.fromkeys(FILE_NAMES, 0)
    latest: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in _SNAPSHOT_TYPES}
    step = max(1, config.patients // 100)
    unreported = 0
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE

    with ExitStack() as stack:
        streams: dict[str, IO[bytes]] = {
            name: stack.enter_context(open(out_dir / file_name, "wb", buffering=1 << 20))
            for name, file_name in FILE_NAMES.items() if name not in _SNAPSHOT_TYPES
        }
        wearables = streams[WEARABLES]
        for _, resource_type, resource in hospital.events():
            if isinstance(resource, WearableBatch):
                wearables.write(resource.payload)
                counts[WEARABLES] += resource.count
            elif resource_type in latest:
                versions = latest[resource_type]
                if resource_type == "Patient" and resource["id"] not in versions:
                    unreported += 1
                    if progress is not None and unreported >= step:
                        progress(unreported)
                        unreported = 0
                versions[resource["id"]] = resource
            else:
                streams[resource_type].write(dumps(resource, option=newline))
                counts[resource_type] += 1
    for name in _SNAPSHOT_TYPES:
        with open(out_dir / FILE_NAMES[name], "wb", buffering=1 << 20) as handle:
            for resource in latest[name].values():
                handle.write(dumps(resource, option=newline))
        counts[name] = len(latest[name])
    if progress is not None and unreported:
        progress(unreported)

    plan = hospital.plan
    summary = _summarise(plan, out_dir, counts)
    _write_truth(plan, out_dir / "truth", summary, hospital)
    return summary


def _summarise(plan: HospitalPlan, out_dir: Path, counts: dict[str, int]) -> SimulationSummary:
    cfg, window = plan.config, plan.window
    deaths = icu = deteriorations = 0
    for adm in plan.admissions:
        deaths += int(adm.outcome == DIED and adm.end is not None and adm.end < window)
        icu += sum(1 for at, kind in adm.events if kind == "icu" and math.ceil(at) < window)
        deteriorations += int(any(math.ceil(at) < window for at in adm.deterioration_times()))
    risk = plan.risk
    return SimulationSummary(
        out_dir=out_dir, seed=cfg.seed, patients=cfg.patients, days=cfg.days, shift=cfg.shift, counts=counts,
        n_admissions=len(plan.admissions), n_deaths=deaths, n_icu_transfers=icu,
        n_readmissions=sum(1 for adm in plan.admissions if adm.previous is not None),
        n_deteriorations=deteriorations, n_prediction_points=len(risk),
        deterioration_24h_rate=float(risk.label.mean()) if len(risk) else 0.0,
        mean_true_risk_24h=float(risk.risk.mean()) if len(risk) else 0.0,
        best_auroc_deterioration_24h=auroc(risk.risk, risk.label),
    )


def _write_truth(plan: HospitalPlan, truth_dir: Path, summary: SimulationSummary, hospital: Hospital) -> None:
    iso = hospital.clock.iso
    window = plan.window
    admissions = plan.admissions
    risk = plan.risk
    with open(truth_dir / "risk.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["time", "patient_id", "encounter_id", "hours_since_admission", "latent_severity",
                         "setpoint", "true_risk_24h", "deterioration_24h"])
        for j in range(len(risk)):
            adm = admissions[int(risk.admission[j])]
            writer.writerow([iso(int(risk.minute[j])), adm.patient.id, adm.encounter_id,
                             f"{risk.hours_since_admission[j]:.3f}", f"{risk.severity[j]:.3f}",
                             f"{risk.setpoint[j]:.3f}", f"{risk.risk[j]:.6f}", int(risk.label[j])])

    with open(truth_dir / "encounters.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["encounter_id", "patient_id", "admitted", "admission_diagnosis", "age", "charlson",
                         "readmission_of", "deteriorating_course", "ceiling_of_care", "setpoint",
                         "first_icu_transfer", "died", "discharged", "disposition", "readmitted_within_30d",
                         "wearable"])
        for adm in admissions:
            icu = [math.ceil(at) for at, kind in adm.events if kind == "icu" and math.ceil(at) < window]
            ended = adm.end is not None and adm.end < window
            died = ended and adm.outcome == DIED
            readmitted = ""
            if ended and not died and adm.end is not None:
                readmitted = str(int(adm.readmit_at is not None and adm.readmit_at - adm.end <= 30 * 1440))
            writer.writerow([
                adm.encounter_id, adm.patient.id, iso(adm.start), adm.diagnosis.code,
                f"{adm.patient.age:.1f}", adm.patient.charlson,
                "" if adm.previous is None else admissions[adm.previous].encounter_id,
                int(adm.deteriorating), int(adm.ceiling_of_care), f"{adm.setpoint:.3f}",
                iso(icu[0]) if icu else "", iso(adm.end) if died and adm.end is not None else "",
                iso(adm.end) if ended and not died and adm.end is not None else "",
                adm.disposition if ended else "", readmitted, int(adm.wearable),
            ])

    cfg = plan.config
    document = {
        "config": {"seed": cfg.seed, "patients": cfg.patients, "days": cfg.days, "start": iso(0),
                   "wearable_share": cfg.wearable_share, "shift": cfg.shift},
        "summary": {k: v for k, v in summary.to_dict().items() if k != "out_dir"},
        "calibration_deciles": calibration_table(risk.risk, risk.label),
        "latent_parameters": asdict(plan.params),
        "admission_coefficients": asdict(plan.coefficients),
    }
    (truth_dir / "summary.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 |
                                                          orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
