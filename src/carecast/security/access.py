"""May this principal see this patient? Unit membership, or an active break-glass grant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select

from carecast.crypto import Keyring
from carecast.errors import CareCastError
from carecast.security.permissions import Principal
from carecast.store import schema as S

MIN_REASON = 10
MAX_MINUTES = 12 * 60


class BreakGlassError(CareCastError):
    http_status = 422
    exit_code = 2


def patient_units(engine: Engine, patient_id: int) -> set[str]:
    """Units of the patient's open encounters, or of the latest one if none is open."""
    with engine.connect() as conn:
        rows = conn.execute(select(S.Encounter.unit, S.Encounter.discharged_at)
                            .where(S.Encounter.patient_id == patient_id)
                            .order_by(S.Encounter.admitted_at.desc())).all()
    open_units = {r.unit for r in rows if r.discharged_at is None and r.unit}
    if open_units:
        return open_units
    return {rows[0].unit} if rows and rows[0].unit else set()


def active_break_glass(engine: Engine, principal: Principal, patient_id: int, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        return conn.execute(select(S.BreakGlass.id).where(
            S.BreakGlass.user_id == principal.user_id, S.BreakGlass.patient_id == patient_id,
            S.BreakGlass.expires_at > now)).first() is not None


def can_see_patient(engine: Engine, principal: Principal, patient_id: int, now: datetime | None = None) -> bool:
    if not principal.unit_restricted:
        return True
    if principal.units & patient_units(engine, patient_id):
        return True
    return active_break_glass(engine, principal, patient_id, now)


def open_break_glass(engine: Engine, keyring: Keyring, principal: Principal, patient_id: int, reason: str,
                     minutes: int = 60, now: datetime | None = None) -> datetime:
    """Grant emergency access; the reason is required and kept encrypted (it may name the patient)."""
    if len((reason or "").strip()) < MIN_REASON:
        raise BreakGlassError(f"break-glass needs a reason of at least {MIN_REASON} characters")
    if not 0 < minutes <= MAX_MINUTES:
        raise BreakGlassError(f"break-glass lasts between 1 and {MAX_MINUTES} minutes")
    now = now or datetime.now(UTC)
    expires = now + timedelta(minutes=minutes)
    with engine.begin() as conn:
        conn.execute(insert(S.BreakGlass).values(
            user_id=principal.user_id, patient_id=patient_id,
            reason_enc=keyring.encrypt(reason.strip(), "break_glass.reason"), started_at=now, expires_at=expires))
    return expires
