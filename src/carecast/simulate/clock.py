"""Simulation time: whole minutes since the configured start, and their FHIR dateTime spelling."""

from __future__ import annotations

from datetime import datetime, timedelta

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Clock:
    """Turns minute offsets (ints, negative for the past) into aware datetimes and "...Z" strings."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._iso: dict[int, str] = {}

    def at(self, minute: int) -> datetime:
        return self.start + timedelta(minutes=minute)

    def iso(self, minute: int) -> str:
        """FHIR dateTime / instant, to the second, in UTC with a Z suffix."""
        text = self._iso.get(minute)
        if text is None:
            text = self.at(minute).strftime(_FORMAT)
            self._iso[minute] = text
        return text

    def date(self, minute: int) -> str:
        return self.at(minute).strftime("%Y-%m-%d")

    def spell_range(self, low: int, high: int) -> list[str]:
        """Spellings of every minute in [low, high), index 0 being `low`; for minute-rate streams."""
        base = self.at(low)
        return [(base + timedelta(minutes=i)).strftime(_FORMAT) for i in range(high - low)]

    def minute_of_day(self, minute: int) -> int:
        """Minutes since midnight UTC of the given offset (drives the hospital's daily rhythm)."""
        first = self.start.hour * 60 + self.start.minute
        return (first + minute) % 1440
