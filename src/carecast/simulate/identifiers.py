"""Seeded randomness and identifiers: one RNG stream per purpose, UUIDs and DICOM UIDs drawn from it.

Every stream is a numpy Generator over PCG64, keyed by (seed, purpose, index), so a stream never depends
on how many draws another stream made. Nothing here reads the clock or Python's hash seed.
"""

from __future__ import annotations

import numpy as np

# Stream purposes. Changing a number changes every output of that purpose.
(POPULATION, COURSES, SCHEDULE, CLINICAL, WEARABLE, REGIONS, READMISSION, IDENTIFIERS, HISTORY,
 RESOURCE_IDS) = range(1, 11)


def rng_for(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    """The random stream for one purpose (and one admission or round, where given)."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(purpose, index))
    return np.random.Generator(np.random.PCG64(sequence))


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    """`n` random (version 4) UUID strings drawn from `rng`."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    out = []
    for row in raw:
        h = row.tobytes().hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def dicom_uid(rng: np.random.Generator) -> str:
    """A DICOM UID under the 2.25 root (a UUID written as a decimal integer), e.g. "2.25.3318..."."""
    raw = rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()
    return f"2.25.{int.from_bytes(raw, 'big')}"


def hex_serial(rng: np.random.Generator, digits: int = 8) -> str:
    """An upper-case hexadecimal serial number, e.g. a device serial."""
    raw = rng.integers(0, 256, size=(digits + 1) // 2, dtype=np.uint8).tobytes()
    return raw.hex().upper()[:digits]


class IdPool:
    """Resource ids drawn in blocks from one stream, handed out one at a time."""

    def __init__(self, rng: np.random.Generator, block: int = 64) -> None:
        self._rng = rng
        self._block = block
        self._ids: list[str] = []

    def next(self) -> str:
        if not self._ids:
            self._ids = uuids(self._rng, self._block)
            self._ids.reverse()
        return self._ids.pop()
