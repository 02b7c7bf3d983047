"""Minute-rate wearable readings of one device, uploaded in hourly batches as JSON lines.

The line format is documented in docs/wearable-format.md. Values follow the same latent severity as the
bedside vitals (plus activity and noise). Like real device gateways, a batch re-sends about 0.5 % of
its lines (exact duplicates) and holds back about 1 % to a later batch (late, out of order), so readers
must deduplicate and must not assume time order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress
from typing import Any

import numpy as np
import orjson

from carecast.simulate.latent import softplus
from carecast.simulate.physiology import Phenotype, oxygen_support, vital_means

# (type, UCUM unit, minutes between readings)
READING_TYPES: tuple[tuple[str, str, int], ...] = (
    ("heart_rate", "/min", 1), ("spo2", "%", 1), ("respiratory_rate", "/min", 5), ("steps", "{steps}", 1),
)
DUPLICATE_SHARE = 0.005
LATE_SHARE = 0.01
_VALUE_TEXT = tuple(str(i) for i in range(0, 1001))


@dataclass(frozen=True, slots=True)
class WearableBatch:
    """One upload from one device: `count` JSON lines (each ending in a newline) in `payload`."""

    device_id: str
    patient: str
    payload: bytes
    count: int

    def readings(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.payload.splitlines()]


def worn_minutes(rng: np.random.Generator, intervals: list[tuple[int, int]]) -> np.ndarray:
    """Minutes the device is on the body: the given intervals less one or two off-body gaps per day
    (showers, charging), each 20-90 minutes."""
    parts = []
    for low, high in intervals:
        if high <= low:
            continue
        minutes = np.arange(low, high, dtype=np.int64)
        keep = np.ones(len(minutes), dtype=bool)
        n_gaps = int(rng.poisson(1.5 * len(minutes) / 1440.0))
        for _ in range(n_gaps):
            at = int(rng.integers(0, len(minutes)))
            keep[at:at + int(rng.integers(20, 91))] = False
        parts.append(minutes[keep])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class WearableDevice:
    """Readings of one device worn by one patient during one admission.

    `severity[k]` is s during hour k of the admission (which starts at minute `admission_start`);
    `times[m - times_offset]` is the ISO spelling of minute m.
    """

    def __init__(self, *, device_id: str, patient_ref: str, admission_start: int, severity: np.ndarray,
                 baseline: dict[str, float], phenotype: Phenotype, worn: np.ndarray, upload_offset: int,
                 rng: np.random.Generator, times: list[str], times_offset: int,
                 first_minute_of_day: int) -> None:
        self.device_id = device_id
        self.patient_ref = patient_ref
        self.start = admission_start
        self.severity = severity
        self.baseline = baseline
        self.phenotype = phenotype
        self.worn = worn
        self.offset = upload_offset
        self.rng = rng
        self.times = times
        self.times_offset = times_offset
        self.first_minute_of_day = first_minute_of_day
        prefix = f'{{"device_id":"{device_id}","patient":"{patient_ref}","type":"'
        self._heads = {t: f'{prefix}{t}","value":' for t, _, _ in READING_TYPES}
        self._tails = {t: f',"unit":"{unit}","time":"' for t, unit, _ in READING_TYPES}

    def uploads(self) -> np.ndarray:
        """Upload minutes, one per hour of wear; each batch holds the hour of readings before it."""
        if self.worn.size == 0:
            return np.zeros(0, dtype=np.int64)
        slot = (self.worn - self.offset) // 60 + 1
        return np.unique(slot) * 60 + self.offset

    def batches(self) -> Iterator[tuple[int, WearableBatch]]:
        uploads = self.uploads()
        if uploads.size == 0:
            return
        bounds = np.searchsorted(self.worn, uploads - 60), np.searchsorted(self.worn, uploads)
        pending: dict[int, list[str]] = {}
        drift = 0.0
        last = len(uploads) - 1
        for b, upload in enumerate(uploads.tolist()):
            minutes = self.worn[bounds[0][b]:bounds[1][b]]
            new_drift = 0.7 * drift + 2.0 * float(self.rng.standard_normal())
            lines = self._lines(minutes, upload, drift, new_drift)
            drift = new_drift
            n = len(lines)
            late = (self.rng.random(n) < LATE_SHARE) & (b < last)
            dup = np.flatnonzero(self.rng.random(n) < DUPLICATE_SHARE).tolist()
            held = np.flatnonzero(late).tolist()
            if held:
                for j, delay in zip(held, self.rng.integers(1, 4, size=len(held)).tolist(), strict=True):
                    pending.setdefault(min(b + delay, last), []).append(lines[j])
                out = list(compress(lines, (~late).tolist()))
            else:
                out = list(lines)
            out.extend(pending.pop(b, ()))
            if b == last:
                for key in sorted(pending):
                    out.extend(pending.pop(key))
            out.extend(lines[j] for j in dup)
            if out:
                yield upload, WearableBatch(self.device_id, self.patient_ref, "".join(out).encode(), len(out))

    def _lines(self, minutes: np.ndarray, upload: int, drift_from: float, drift_to: float) -> list[str]:
        if minutes.size == 0:
            return []
        rng = self.rng
        n = len(minutes)
        s = self.severity[np.minimum((minutes - self.start) // 60, len(self.severity) - 1)]
        mean = vital_means(s, self.baseline, self.phenotype)
        _, spo2_mean = oxygen_support(mean["spo2"])
        load = softplus(s)
        of_day = (self.first_minute_of_day + minutes) % 1440
        awake = (of_day >= 7 * 60) & (of_day < 22 * 60)
        blocks, block_of = np.unique(minutes // 5, return_inverse=True)
        walk_draw = rng.random(len(blocks))[block_of]
        walking = walk_draw < np.where(awake, 0.07 * np.exp(-0.9 * load), 0.003)
        noise = rng.standard_normal((4, n))
        fidget = rng.random(n) < 0.03
        steps = np.where(walking, np.clip(np.rint(62.0 + 15.0 * noise[0]), 5, 140),
                         np.where(fidget, rng.integers(1, 16, size=n), 0))
        ramp = drift_from + (drift_to - drift_from) * (minutes - (upload - 60)) / 60.0
        heart = np.clip(np.rint(mean["heart_rate"] + 14.0 * walking + ramp + 2.0 * noise[1]), 30, 210)
        spo2 = np.clip(np.rint(spo2_mean - 0.6 * walking + 0.7 * noise[2]), 70, 100)
        breathing = np.clip(np.rint(mean["respiratory_rate"] + 2.0 * walking + 1.1 * noise[3]), 5, 55)

        times, offset = self.times, self.times_offset
        values = {"heart_rate": heart, "spo2": spo2, "respiratory_rate": breathing, "steps": steps}
        text = _VALUE_TEXT
        lines: list[str] = []
        for kind, _, every in READING_TYPES:
            head, tail = self._heads[kind], self._tails[kind]
            chosen = np.ones(n, dtype=bool) if every == 1 else (minutes % every == 0)
            vals = values[kind][chosen].astype(np.int64).tolist()
            mins = (minutes[chosen] - offset).tolist()
            lines.extend([f'{head}{text[v]}{tail}{times[m]}"}}\n' for v, m in zip(vals, mins, strict=True)])
        return lines
