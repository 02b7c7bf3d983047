"""Users: creation, password sign-in with lockout, unit membership."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update

from carecast.errors import CareCastError, NotFoundError
from carecast.security.passwords import hash_password, needs_rehash, verify_password
from carecast.security.permissions import ROLES, Principal
from carecast.store import schema as S

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)


@functools.cache
def _dummy_hash() -> str:
    """Verifying against a real hash when the user does not exist keeps sign-in time the same either way.
    Made on first use, not at import: argon2 costs tens of ms and 64 MiB, and every process imports this."""
    return hash_password(secrets.token_urlsafe(16))


class UserError(CareCastError):
    http_status = 422
    exit_code = 2


def _now() -> datetime:
    return datetime.now(UTC)


def create_user(engine: Engine, username: str, password: str, role: str, units: Iterable[str] = ()) -> int:
    if role not in ROLES:
        raise UserError(f"unknown role {role}; choose one of {', '.join(ROLES)}")
    if not username or len(username) > 64 or not username.replace("_", "").replace(".", "").replace("-", "").isalnum():
        raise UserError("a username is 1-64 letters, digits, '.', '_' or '-'")
    with engine.begin() as conn:
        if conn.execute(select(S.User.id).where(S.User.username == username)).first():
            raise UserError(f"user {username} already exists")
        uid = conn.execute(insert(S.User).values(
            username=username, password_hash=hash_password(password), role=role, active=True, failed_logins=0,
            created_at=_now()).returning(S.User.id)).scalar_one()
        for unit in sorted(set(units)):
            conn.execute(insert(S.UserUnit).values(user_id=uid, unit=unit))
    return int(uid)


def set_units(engine: Engine, username: str, units: Iterable[str]) -> None:
    with engine.begin() as conn:
        uid = conn.execute(select(S.User.id).where(S.User.username == username)).scalar_one_or_none()
        if uid is None:
            raise NotFoundError(f"no user {username}")
        conn.execute(delete(S.UserUnit).where(S.UserUnit.user_id == uid))
        for unit in sorted(set(units)):
            conn.execute(insert(S.UserUnit).values(user_id=uid, unit=unit))
    from carecast.security.tokens import forget  # tokens imports users; resolve the cycle at call time

    forget()  # cached principals carry units: drop them in this process


def principal_for(engine: Engine, user_id: int, *, via: str, scopes: frozenset[str] | None = None) -> Principal | None:
    with engine.connect() as conn:
        user = conn.execute(select(S.User).where(S.User.id == user_id, S.User.active.is_(True))).first()
        if user is None:
            return None
        units = conn.execute(select(S.UserUnit.unit).where(S.UserUnit.user_id == user_id)).scalars().all()
    return Principal(user_id=user.id, username=user.username, role=user.role, units=frozenset(units), scopes=scopes,
                     via=via)


def authenticate(engine: Engine, username: str, password: str, now: datetime | None = None) -> Principal | None:
    """A principal for the right password; None otherwise. Five failures lock the account for 15 minutes
    (a correct password during the lock is refused too)."""
    now = now or _now()
    with engine.begin() as conn:
        user = conn.execute(select(S.User).where(S.User.username == username)).first()
        if user is None or not user.active:
            verify_password(_dummy_hash(), password)
            return None
        if user.locked_until is not None and user.locked_until > now:
            return None
        if not verify_password(user.password_hash, password):
            failures = user.failed_logins + 1
            values: dict[str, object] = {"failed_logins": failures}
            if failures >= MAX_FAILURES:
                values = {"failed_logins": 0, "locked_until": now + LOCKOUT}
            conn.execute(update(S.User).where(S.User.id == user.id).values(**values))
            return None
        values = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
        if needs_rehash(user.password_hash):
            values["password_hash"] = hash_password(password)
        conn.execute(update(S.User).where(S.User.id == user.id).values(**values))
    return principal_for(engine, user.id, via="session")


def list_users(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        users = conn.execute(select(S.User).order_by(S.User.username)).all()
        units = conn.execute(select(S.UserUnit)).all()
    by_user: dict[int, list[str]] = {}
    for u in units:
        by_user.setdefault(u.user_id, []).append(u.unit)
    return [{"username": u.username, "role": u.role, "active": u.active, "units": sorted(by_user.get(u.id, [])),
             "locked": bool(u.locked_until and u.locked_until > _now())} for u in users]
