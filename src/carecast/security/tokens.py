"""API bearer tokens: random, shown once, stored only as a SHA-256 hash; scoped and expiring."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from carecast.security.permissions import Permission, Principal
from carecast.security.users import UserError, principal_for
from carecast.store import schema as S

PREFIX = "cc_"
MAX_TTL_HOURS = 24 * 365


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(engine: Engine, user_id: int, name: str, scopes: Iterable[str], ttl_hours: float = 24 * 30,
                now: datetime | None = None) -> str:
    """A new token; the plaintext is returned once and never stored."""
    scope_set = sorted(set(scopes))
    known = {str(p) for p in Permission}
    unknown = [s for s in scope_set if s not in known]
    if unknown:
        raise UserError(f"unknown scope(s): {', '.join(unknown)}")
    if not 0 < ttl_hours <= MAX_TTL_HOURS:
        raise UserError(f"a token lives between 0 and {MAX_TTL_HOURS} hours")
    now = now or datetime.now(UTC)
    token = PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(insert(S.ApiToken).values(
            user_id=user_id, token_hash=_digest(token), name=name[:64], scopes=" ".join(scope_set), created_at=now,
            expires_at=now + timedelta(hours=ttl_hours)))
    return token


def resolve_token(engine: Engine, token: str, now: datetime | None = None) -> Principal | None:
    """The principal of a valid token; None if unknown, expired or revoked."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(select(S.ApiToken).where(S.ApiToken.token_hash == _digest(token))).first()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            return None
        conn.execute(update(S.ApiToken).where(S.ApiToken.id == row.id).values(last_used_at=now))
    scopes = frozenset(row.scopes.split()) if row.scopes else None
    return principal_for(engine, row.user_id, via="token", scopes=scopes)


def revoke_token(engine: Engine, token_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(S.ApiToken).where(S.ApiToken.id == token_id).values(revoked_at=datetime.now(UTC)))


def list_tokens(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(S.ApiToken.id, S.User.username, S.ApiToken.name, S.ApiToken.scopes,
                                   S.ApiToken.expires_at, S.ApiToken.revoked_at)
                            .join(S.User, S.User.id == S.ApiToken.user_id).order_by(S.ApiToken.id)).all()
    return [{"id": r.id, "user": r.username, "name": r.name, "scopes": r.scopes,
             "expires_at": r.expires_at.isoformat(), "revoked": r.revoked_at is not None} for r in rows]
