"""Deny by default: every view declares the permission it needs (`@requires`) or that it is `@public`.

`requires` authenticates the bearer token, checks the permission and audits a denial: exactly one audit
row per refused request ("auth:failed" for a missing or invalid token, "auth:denied" for a missing
permission or a patient outside the caller's units). `check_declared` refuses to build an app that has
a view with neither declaration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, g, request

from carecast.errors import ConfigError
from carecast.security.permissions import Permission, Principal
from carecast.security.tokens import resolve_token
from carecast.serving.context import principal, request_id, services, source_ip
from carecast.serving.errors import Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])

PERMISSION_ATTR = "_carecast_permission"
PUBLIC_ATTR = "_carecast_public"
MAX_TOKEN_LENGTH = 200


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


def authenticate() -> Principal:
    """The principal of the request's bearer token; audits and raises 401 if there is none or it is invalid."""
    token = _bearer_token()
    if token is None:
        audit(Action.AUTH_FAILED, "denied", detail="no bearer token")
        raise Unauthorized()
    found = resolve_token(services().store.engine, token)
    if found is None:
        audit(Action.AUTH_FAILED, "denied", detail="unknown, expired or revoked token")
        raise Unauthorized()
    g.principal = found
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


def permission_of(view: Callable[..., Any]) -> Permission | None:
    found: Permission | None = getattr(view, PERMISSION_ATTR, None)
    return found


def is_public(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, PUBLIC_ATTR, False))


def check_declared(app: Flask) -> None:
    """Refuse an app in which a view declares neither a permission nor that it is public."""
    missing = sorted(
        rule.endpoint for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        and permission_of(app.view_functions[rule.endpoint]) is None
        and not is_public(app.view_functions[rule.endpoint]))
    if missing:
        raise ConfigError("these endpoints declare no permission (use @requires or @public): " + ", ".join(missing))
