"""Small reads of the users table that the web UI needs and `carecast.security.users` does not offer."""

from __future__ import annotations

from sqlalchemy import Engine, select

from carecast.store import schema as S


def active_user_id(engine: Engine, username: str) -> int | None:
    """The id of the active user with this name, or None."""
    with engine.connect() as conn:
        found = conn.execute(select(S.User.id).where(S.User.username == username, S.User.active.is_(True))).scalar()
    return None if found is None else int(found)
