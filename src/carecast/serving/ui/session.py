"""Browser sessions of the UI: the signing key, sign-in state in a signed cookie, automatic logoff after
idle minutes, CSRF tokens, and the page guards that declare each view's permission.

The session cookie (HttpOnly, SameSite=Lax, Secure outside development) holds only the user id, the
sign-in time, the time of the last user action and the CSRF token. The principal is read again from
the users table on every request, so a deactivated user or a changed role takes effect at once.

Deny by default: `page(permission)` marks a view with the same attribute as `auth.requires`, so
`check_declared` sees it; a signed-out browser is redirected to the sign-in page, a signed-in user
without the permission gets a 403 page and one "auth:denied" audit row.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask, Request, Response, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from carecast.config import Settings
from carecast.errors import ConfigError
from carecast.security.permissions import Permission, Principal
from carecast.security.users import principal_for
from carecast.serving.auth import AUTHENTICATED_BY_ATTR, PERMISSION_ATTR, Action, audit, deny, throttle
from carecast.serving.context import services
from carecast.serving.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])

SESSION_SCHEME = "session"
COOKIE_NAME = "carecast_session"
MIN_SECRET_LENGTH = 32
MAX_SESSION = timedelta(hours=12)  # signed in at most this long, however active
WARN_BEFORE_S = 120.0  # the idle warning shows this long before the logoff (at most half the idle time)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE = Path("keys") / "session.key"


class UiAction:
    """Audit tags of the UI (the API's tags in `auth.Action` are used for the same reads)."""

    LOGIN = "auth:login"
    LOGOUT = "auth:logout"
    LOGOFF_IDLE = "auth:logoff-idle"
    CSRF_REFUSED = "auth:csrf-refused"
    ALERT_ACKNOWLEDGE = "alert:acknowledge"
    ALERT_DISMISS = "alert:dismiss"
    MODEL_PROMOTE = "model:promote"
    MODEL_ROLLBACK = "model:rollback"
    USER_CREATE = "user:create"
    USER_UNITS = "user:units"
    TOKEN_ISSUE = "token:issue"  # noqa: S105 (an audit tag, not a secret)
    TOKEN_REVOKE = "token:revoke"  # noqa: S105
    AUDIT_READ = "audit:read"
    AUDIT_EXPORT = "audit:export"
    POPULATION_READ = "population:read"


class CsrfRefused(ApiError):
    http_status = 403
    code = "csrf_refused"


# -- the signing key ------------------------------------------------------------------------------------------

def secret_key(settings: Settings) -> str:
    """CARECAST_SECRET_KEY; in production it is required. Elsewhere a key is generated once and kept in
    the data dir (mode 0600), so sessions survive a restart."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_SECRET_LENGTH:
            raise ConfigError(f"CARECAST_SECRET_KEY must have at least {MIN_SECRET_LENGTH} characters")
        return settings.secret_key
    if settings.is_production:
        raise ConfigError("CARECAST_SECRET_KEY is required in production (it signs the web UI's sessions)")
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written whole to a private temporary file, then linked into place: a process starting at the same
        # moment either finds no file or the complete one, and only the first link wins.
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            draft.unlink()
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(f"the session key file {SECRET_FILE} is too short; delete it to make a new one")
    return key


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the session cookie (every API call,
    which authenticates with a bearer token) gets its empty session without building the signing
    serializer first: Flask builds one per request, a noticeable share of a small API request's time."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def configure(app: Flask, settings: Settings) -> None:
    app.secret_key = secret_key(settings)
    app.session_interface = CookieSessions()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.env != "development",
        PERMANENT_SESSION_LIFETIME=MAX_SESSION,  # also the signed cookie's maximum age
    )


# -- idle time ------------------------------------------------------------------------------------------------

def idle_seconds() -> float:
    return float(services().settings.session_idle_minutes) * 60.0


def warn_seconds() -> float:
    """How long before the logoff the warning shows."""
    return min(WARN_BEFORE_S, idle_seconds() / 2)


def remaining_seconds(now: float | None = None) -> float:
    """Seconds of this session left before the idle logoff (0 when signed out)."""
    if session.get("uid") is None:
        return 0.0
    now = time.time() if now is None else now
    seen = float(session.get("seen", 0))
    start = float(session.get("start", 0))
    return max(0.0, min(seen + idle_seconds(), start + MAX_SESSION.total_seconds()) - now)


# -- sign-in state --------------------------------------------------------------------------------------------

def sign_in(who: Principal) -> None:
    """A fresh session for `who` (nothing of the signed-out session carries over)."""
    now = time.time()
    session.clear()
    session["uid"] = who.user_id
    session["start"] = now
    session["seen"] = now
    session["csrf"] = secrets.token_urlsafe(32)
    g.principal = who


def sign_out() -> None:
    session.clear()


def current_user(*, touch: bool) -> Principal | None:
    """The signed-in principal, or None. A session idle too long is ended here (audited once). `touch`
    counts this request as user activity; live updates and background refreshes do not."""
    uid = session.get("uid")
    if not isinstance(uid, int):
        return None
    now = time.time()
    if remaining_seconds(now) <= 0:
        who = principal_for(services().store.engine, uid, via=SESSION_SCHEME)
        audit(UiAction.LOGOFF_IDLE, detail="session idle or too old", who=who)
        sign_out()
        g.logged_off = True
        return None
    who = principal_for(services().store.engine, uid, via=SESSION_SCHEME)
    if who is None:  # deactivated since
        sign_out()
        return None
    if touch:
        session["seen"] = now
    g.principal = who
    throttle(f"user:{who.user_id}")  # the same per-user rate as the API (429 with Retry-After)
    return who


def safe_next(target: str | None) -> str | None:
    """A same-site path to return to after sign-in; anything else (another host, a scheme) is dropped."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def _signed_out_answer() -> Response:
    """Browsers navigating are sent to the sign-in page; scripts (fetch, EventSource) get a bare 401. The
    refusal leaves one audit row, as the API's does (an idle logoff has just left its own)."""
    if not getattr(g, "logged_off", False):
        audit(Action.AUTH_FAILED, "denied", detail="no web session")
    if request.method == "GET" and request.accept_mimetypes.accept_html:
        reason = "idle" if getattr(g, "logged_off", False) else None
        target = redirect(url_for("ui.login", next=request.full_path.rstrip("?"), reason=reason))
        return cast(Response, target)
    return Response("signed out", status=401, mimetype="text/plain")


def page(permission: Permission, *, touch: bool = True) -> Callable[[F], F]:
    """Guard a UI view: a signed-in user whose role has `permission` (deny by default)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            who = current_user(touch=touch)
            if who is None:
                return _signed_out_answer()
            if not who.can(permission):
                raise deny(f"lacks {permission}")
            return view(*args, **kwargs)

        setattr(guarded, PERMISSION_ATTR, permission)
        return cast(F, guarded)

    return decorate


def signed_in(*, touch: bool = True) -> Callable[[F], F]:
    """Guard a view any signed-in user may open (home, keep-alive); declared as the session scheme."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if current_user(touch=touch) is None:
                return _signed_out_answer()
            return view(*args, **kwargs)

        setattr(guarded, AUTHENTICATED_BY_ATTR, SESSION_SCHEME)
        return cast(F, guarded)

    return decorate


# -- CSRF -----------------------------------------------------------------------------------------------------

def csrf_token() -> str:
    """This session's CSRF token (made on first use, also before sign-in for the sign-in form)."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Every request that is not GET/HEAD/OPTIONS must carry the session's token (form field or header)."""
    if request.method in SAFE_METHODS:
        return
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        audit(UiAction.CSRF_REFUSED, "denied", detail="missing or wrong CSRF token")
        raise CsrfRefused("this form has expired or did not come from CareCast; reload the page and try again")


def home_endpoint(who: Principal) -> str:
    """Where a user lands after sign-in: the first page their role can use."""
    for permission, endpoint in ((Permission.PATIENT_READ, "ui.ward"), (Permission.USER_MANAGE, "ui.admin_users"),
                                 (Permission.AUDIT_READ, "ui.audit"), (Permission.MODEL_READ, "ui.models")):
        if who.can(permission):
            return endpoint
    return "ui.account"


def can(permission: Permission | str) -> bool:
    """For templates: may the signed-in user do this? (Hides links; the views check again.)"""
    who: Principal | None = getattr(g, "principal", None)
    return who is not None and who.can(Permission(permission))




__all__ = ["Action", "CookieSessions", "UiAction", "can", "check_csrf", "configure", "csrf_token", "current_user",
           "page", "remaining_seconds", "safe_next", "secret_key", "sign_in", "sign_out", "signed_in", "warn_seconds"]
