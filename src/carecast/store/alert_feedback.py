"""What clinicians did with risk alerts in the web UI (acknowledged, or dismissed with a reason), kept in the
CDS Hooks feedback table beside the EHR's card feedback, so monitoring reads one place.

An alert is the high-band prediction of one stored score; its card id is derived from the prediction's row
id (never from patient data). UI rows carry `client_iss` = UI_SOURCE; acknowledge is stored as the CDS
Hooks outcome "accepted", dismiss as "overridden" with a reason code. The optional comment is encrypted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select

from carecast.crypto import Keyring
from carecast.store import schema as S

UI_SOURCE = "carecast-ui"
REASON_SYSTEM = "urn:carecast:alert-dismiss-reason"
ACKNOWLEDGED = "accepted"
DISMISSED = "overridden"
# Reason codes offered when dismissing an alert (code -> words shown to the clinician).
DISMISS_REASONS = {
    "already-treated": "Already being treated or escalated",
    "known-condition": "Explained by a known, stable condition",
    "data-artefact": "Measurement error or artefact",
    "palliative": "Palliative or ceiling-of-care plan in place",
    "not-relevant": "Not clinically relevant for this patient",
    "other": "Other (see comment)",
}
MAX_COMMENT = 1000


@dataclass(frozen=True)
class AlertFeedback:
    card_uuid: str
    outcome: str
    reason_code: str | None
    outcome_at: datetime


def alert_id(prediction_id: int) -> str:
    """The card id of the alert raised by one stored prediction."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:carecast:alert:{int(prediction_id)}"))


def record(engine: Engine, keyring: Keyring, *, prediction_id: int, task: str, outcome: str,
           reason_code: str | None = None, comment: str | None = None, now: datetime | None = None) -> AlertFeedback:
    """Store one acknowledgement or dismissal. A dismissal needs a known reason code."""
    if outcome not in (ACKNOWLEDGED, DISMISSED):
        raise ValueError("outcome must be accepted (acknowledge) or overridden (dismiss)")
    if outcome == DISMISSED and reason_code not in DISMISS_REASONS:
        raise ValueError("a dismissal needs one of the listed reasons")
    now = now or datetime.now(UTC)
    text = (comment or "").strip()[:MAX_COMMENT]
    card = alert_id(prediction_id)
    with engine.begin() as conn:
        conn.execute(insert(S.CdsFeedback).values(
            client_iss=UI_SOURCE, service=task[:64], card_uuid=card, outcome=outcome,
            reason_system=REASON_SYSTEM if outcome == DISMISSED else None,
            reason_code=reason_code if outcome == DISMISSED else None,
            comment_enc=keyring.encrypt(text, "cds_feedback.comment") if text else None,
            outcome_at=now, received_at=now))
    return AlertFeedback(card_uuid=card, outcome=outcome, reason_code=reason_code, outcome_at=now)


def latest_feedback(engine: Engine, card_uuids: Iterable[str]) -> dict[str, AlertFeedback]:
    """The newest UI feedback on each of these alerts (alerts without any are absent)."""
    ids = sorted(set(card_uuids))
    if not ids:
        return {}
    f = S.CdsFeedback
    with engine.connect() as conn:
        rows = conn.execute(select(f.card_uuid, f.outcome, f.reason_code, f.outcome_at)
                            .where(f.client_iss == UI_SOURCE, f.card_uuid.in_(ids))
                            .order_by(f.outcome_at, f.id)).all()
    return {r.card_uuid: AlertFeedback(card_uuid=r.card_uuid, outcome=r.outcome, reason_code=r.reason_code,
                                       outcome_at=r.outcome_at) for r in rows}
