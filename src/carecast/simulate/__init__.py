"""The synthetic hospital used for the demo, load tests and end-to-end tests.

`simulate(config, out_dir)` writes FHIR R4 bulk NDJSON, a wearable JSONL file and the ground truth;
`Hospital(config).events()` yields the same resources as a time-ordered live feed. See docs/simulator.md.
"""

from carecast.simulate.config import SHIFTS, SimulationConfig
from carecast.simulate.hospital import WEARABLES, Event, Hospital
from carecast.simulate.run import FILE_NAMES, SimulationSummary, simulate
from carecast.simulate.wearables import WearableBatch

__all__ = [
    "FILE_NAMES",
    "SHIFTS",
    "WEARABLES",
    "Event",
    "Hospital",
    "SimulationConfig",
    "SimulationSummary",
    "WearableBatch",
    "simulate",
]
