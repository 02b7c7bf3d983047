"""Feedback rates for monitoring: how often clinicians accepted or overrode CDS Hooks cards (the EHR's channel)
and acknowledged or dismissed alerts in the web UI (the UI's channel, `alert_feedback.UI_SOURCE`), with the
override and dismissal reason codes. Counts only: no comment is read, no patient is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, case, func, select

from carecast.store import schema as S
from carecast.store.alert_feedback import UI_SOURCE

CDS, UI = "cds", "ui"


@dataclass(frozen=True)
class FeedbackCount:
    channel: str  # cds | ui
    outcome: str  # accepted | overridden (the UI's acknowledge | dismiss are stored as these)
    reason_code: str | None
    cards: int  # distinct cards (alerts) with this outcome and reason


def feedback_counts(engine: Engine, *, since: datetime | None = None,
                    until: datetime | None = None) -> list[FeedbackCount]:
    """Distinct cards per channel, outcome and reason code, with outcomes recorded in [since, until]."""
    F = S.CdsFeedback
    channel = case((F.client_iss == UI_SOURCE, UI), else_=CDS)
    stmt = (select(channel.label("channel"), F.outcome, F.reason_code, func.count(func.distinct(F.card_uuid)))
            .group_by(channel, F.outcome, F.reason_code))
    if since is not None:
        stmt = stmt.where(F.outcome_at >= since)
    if until is not None:
        stmt = stmt.where(F.outcome_at <= until)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    found = [FeedbackCount(channel=str(c), outcome=str(o), reason_code=None if r is None else str(r), cards=int(n))
             for c, o, r, n in rows]
    return sorted(found, key=lambda f: (f.channel, f.outcome, -f.cards, f.reason_code or ""))


__all__ = ["CDS", "UI", "FeedbackCount", "feedback_counts"]
