"""API bearer tokens: random, shown once, stored only as a SHA-256 hash; scoped and expiring."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from carecast.security.permissions import Permission, Principal
from carecast.security.users import UserError, principal_for
from carecast.store import schema as S

PREFIX = "cc_"
MAX_TTL_HOURS = 24 * 365
# A resolved token is remembered for CACHE_SECONDS so a busy client costs no database round trip per
# request; last_used_at is written at most once a minute. Revocation is immediate in the revoking
# process and takes effect elsewhere within CACHE_SECONDS; expiry is always checked on the spot.
CACHE_SECONDS = 30.0
TOUCH_SECONDS = 60.0
_cache: dict[str, tuple[Principal, datetime, float, float]] = {}  # digest -> principal, expires, cached, touched
_cache_lock = threading.Lock()


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


def resolve_token(engine: Engine, token: str, now: datetime | None = None, *, fresh: bool = False) -> Principal | None:
    """The principal of a valid token; None if unknown, expired or revoked. `fresh` skips the cache (for
    long-lived connections re-checking that their token still stands)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    now = now or datetime.now(UTC)
    digest = _digest(token)
    tick = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
    if hit is not None and not fresh:
        principal, expires, cached, touched = hit
        if expires <= now:
            return None
        if tick - cached < CACHE_SECONDS:
            if tick - touched >= TOUCH_SECONDS:
                with engine.begin() as conn:
                    conn.execute(update(S.ApiToken).where(S.ApiToken.token_hash == digest).values(last_used_at=now))
                with _cache_lock:
                    _cache[digest] = (principal, expires, cached, tick)
            return principal
    with engine.begin() as conn:
        row = conn.execute(select(S.ApiToken).where(S.ApiToken.token_hash == digest)).first()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            return None
        conn.execute(update(S.ApiToken).where(S.ApiToken.id == row.id).values(last_used_at=now))
    scopes = frozenset(row.scopes.split()) if row.scopes else None
    found = principal_for(engine, row.user_id, via="token", scopes=scopes)
    if found is not None:
        with _cache_lock:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[digest] = (found, row.expires_at, tick, tick)
    return found


def revoke_token(engine: Engine, token_id: int) -> None:
    with engine.begin() as conn:
        digest = conn.execute(select(S.ApiToken.token_hash).where(S.ApiToken.id == token_id)).scalar_one_or_none()
        conn.execute(update(S.ApiToken).where(S.ApiToken.id == token_id).values(revoked_at=datetime.now(UTC)))
    forget(digest)


def forget(digest: str | None = None) -> None:
    """Drop a cached token (or all of them): after revocation, or when users or roles change."""
    with _cache_lock:
        if digest is None:
            _cache.clear()
        else:
            _cache.pop(digest, None)


def list_tokens(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(S.ApiToken.id, S.User.username, S.ApiToken.name, S.ApiToken.scopes,
                                   S.ApiToken.expires_at, S.ApiToken.revoked_at)
                            .join(S.User, S.User.id == S.ApiToken.user_id).order_by(S.ApiToken.id)).all()
    return [{"id": r.id, "user": r.username, "name": r.name, "scopes": r.scopes,
             "expires_at": r.expires_at.isoformat(), "revoked": r.revoked_at is not None} for r in rows]
