"""Deny by default: every view declares the permission it needs (`@requires`), that it is `@public`, or
that it authenticates its callers by another scheme (`@authenticated_by`, e.g. CDS Hooks' signed JWTs).

`requires` authenticates the bearer token, checks the permission and audits a denial: exactly one audit
row per refused request ("auth:failed" for a missing or invalid token, "auth:denied" for a missing
permission or a patient outside the caller's units). `check_declared` refuses to build an app that has
a view with neither declaration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request

from carecast.errors import ConfigError
from carecast.security.permissions import Permission, Principal
from carecast.security.tokens import resolve_token
from carecast.serving.context import principal, request_id, services, source_ip
from carecast.serving.errors import Forbidden, TooManyRequests, Unauthorized
from carecast.serving.ratelimit import Limiter, retry_after_header, sign_in_failure_limiter

F = TypeVar("F", bound=Callable[..., Any])

PERMISSION_ATTR = "_carecast_permission"
PUBLIC_ATTR = "_carecast_public"
AUTHENTICATED_BY_ATTR = "_carecast_authenticated_by"
MAX_TOKEN_LENGTH = 200
SIGN_IN_LIMITER = "carecast.sign_in_failures"


class Action:
    """Audit action tags (resource:action). Reads end in ":read" or ":list" (FHIR AuditEvent action R)."""

    AUTH_FAILED = "auth:failed"
    AUTH_DENIED = "auth:denied"
    PATIENT_LIST = "patient:list"
    PATIENT_READ = "patient:read"
    OBSERVATIONS_READ = "patient:observations:read"
    IMAGING_READ = "patient:imaging:read"
    PREDICTION_READ = "prediction:read"
    TRAJECTORY_READ = "prediction:trajectory:read"
    RISK_ASSESSMENT_READ = "prediction:risk-assessment:read"
    BREAK_GLASS = "patient:break-glass"
    PREDICTION_CREATE = "prediction:create"
    PREDICTION_BATCH = "prediction:batch"
    INGEST_FHIR = "ingest:fhir"
    INGEST_NDJSON = "ingest:ndjson"
    INGEST_WEARABLES = "ingest:wearables"
    INGEST_DICOM = "ingest:dicom"


def audit(action: str, outcome: str = "success", *, patient_uid: str | None = None, detail: str | None = None,
          who: Principal | None = None) -> None:
    """One audit row for this request, with who, from where and the request id filled in."""
    services().audit.record(action=action, outcome=outcome, principal=who or getattr(g, "principal", None),
                            patient_uid=patient_uid, source_ip=source_ip(), request_id=request_id(), detail=detail)


def deny(detail: str, *, patient_uid: str | None = None) -> Forbidden:
    """Audit a refusal of the authenticated caller and return the 403 to raise."""
    audit(Action.AUTH_DENIED, "denied", patient_uid=patient_uid, detail=detail, who=principal())
    return Forbidden("not allowed")


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token if 0 < len(token) <= MAX_TOKEN_LENGTH else None


def throttle(key: str) -> None:
    """429 with Retry-After when `key` (a user, or an address for failed sign-ins) is over its rate."""
    limiter = services().limiter
    if limiter is None:
        return
    wait = limiter.hit(key)
    if wait > 0:
        raise TooManyRequests(retry_after_header(wait))


def _sign_in_limiter() -> Limiter:
    found: Limiter | None = current_app.extensions.get(SIGN_IN_LIMITER)
    if found is None:
        made = sign_in_failure_limiter(services().settings.queue_url)
        found = current_app.extensions.setdefault(SIGN_IN_LIMITER, made)
    return found


def check_sign_in_allowed() -> None:
    """Before a password is checked: 429 (audited) if this address has failed too often lately, so a throttled
    guesser learns nothing, not even a right guess."""
    limiter = _sign_in_limiter()
    peek = getattr(limiter, "peek", None)
    wait = peek(f"sign-in:{request.remote_addr}") if callable(peek) else 0.0
    if wait > 0:
        audit(Action.AUTH_FAILED, "denied", detail="sign-in throttled")
        raise TooManyRequests(retry_after_header(wait))


def count_failed_sign_in() -> None:
    """After a refused password: count it against the address (429 once over the budget)."""
    throttle(f"fail:{request.remote_addr}")
    wait = _sign_in_limiter().hit(f"sign-in:{request.remote_addr}")
    if wait > 0:
        raise TooManyRequests(retry_after_header(wait))


def authenticate() -> Principal:
    """The principal of the request's bearer token; audits and raises 401 if there is none or it is invalid.
    Failed attempts count against the caller's address, so guessing tokens is throttled (429)."""
    token = _bearer_token()
    if token is None:
        audit(Action.AUTH_FAILED, "denied", detail="no bearer token")
        throttle(f"fail:{request.remote_addr}")
        raise Unauthorized()
    found = resolve_token(services().store.engine, token)
    if found is None:
        audit(Action.AUTH_FAILED, "denied", detail="unknown, expired or revoked token")
        throttle(f"fail:{request.remote_addr}")
        raise Unauthorized()
    g.principal = found
    throttle(f"user:{found.user_id}")
    return found


def requires(permission: Permission) -> Callable[[F], F]:
    """Guard a view: a valid bearer token whose principal has `permission`, else 401 or 403 (audited)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            who = authenticate()
            if not who.can(permission):
                raise deny(f"lacks {permission}")
            return view(*args, **kwargs)

        setattr(guarded, PERMISSION_ATTR, permission)
        return cast(F, guarded)

    return decorate


def public(view: F) -> F:
    """Declare a view open to anyone (health checks, the API description). Not audited."""
    setattr(view, PUBLIC_ATTR, True)
    return view


def authenticated_by(scheme: str) -> Callable[[F], F]:
    """Declare a view outside the bearer-token API that authenticates its callers itself by `scheme`
    (and audits its refusals). The guard doing so applies this marker; the marker alone checks nothing."""

    def mark(view: F) -> F:
        setattr(view, AUTHENTICATED_BY_ATTR, scheme)
        return view

    return mark


def authentication_of(view: Callable[..., Any]) -> str | None:
    found: str | None = getattr(view, AUTHENTICATED_BY_ATTR, None)
    return found


def permission_of(view: Callable[..., Any]) -> Permission | None:
    found: Permission | None = getattr(view, PERMISSION_ATTR, None)
    return found


def is_public(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, PUBLIC_ATTR, False))


def check_declared(app: Flask) -> None:
    """Refuse an app in which a view declares neither a permission, nor that it is public, nor its own scheme."""
    missing = sorted(
        rule.endpoint for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and permission_of(app.view_functions[rule.endpoint]) is None
        and not is_public(app.view_functions[rule.endpoint])
        and authentication_of(app.view_functions[rule.endpoint]) is None)
    if missing:
        raise ConfigError("these endpoints declare no permission (use @requires, @public or @authenticated_by): "
                          + ", ".join(missing))
