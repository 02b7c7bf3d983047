"""The live feed: `Hospital.events()` is time-ordered and a resource never precedes what it refers to."""

from __future__ import annotations

from datetime import timedelta

from carecast.simulate import WEARABLES, Hospital, SimulationConfig, WearableBatch


def test_events_are_time_ordered_and_references_come_first() -> None:
    config = SimulationConfig(seed=9, patients=30, days=2.0, wearable_share=0.5)
    hospital = Hospital(config)
    seen: set[str] = set()
    last = None
    kinds = set()
    end = config.start + timedelta(days=config.days)
    for time, resource_type, resource in hospital.events():
        assert time.tzinfo is not None
        assert last is None or time >= last
        assert time < end
        last = time
        kinds.add(resource_type)
        if resource_type == WEARABLES:
            assert isinstance(resource, WearableBatch)
            assert resource.patient in seen
            continue
        assert isinstance(resource, dict)
        if resource_type != "Patient":
            assert resource["subject"]["reference"] in seen
        if "encounter" in resource:
            assert resource["encounter"]["reference"] in seen
        seen.add(f"{resource_type}/{resource['id']}")
    assert {"Patient", "Encounter", "Condition", "Observation", WEARABLES} <= kinds


def test_events_can_be_replayed_identically() -> None:
    config = SimulationConfig(seed=2, patients=10, days=1.0)
    first = [(t, k, r if isinstance(r, dict) else r.payload) for t, k, r in Hospital(config).events()]
    again = [(t, k, r if isinstance(r, dict) else r.payload) for t, k, r in Hospital(config).events()]
    assert first == again
