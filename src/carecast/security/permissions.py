"""Permissions are `resource:action` strings; roles grant sets of them; tokens may narrow them.

Deny by default: an endpoint declares the one permission it needs, and a principal has it only if
its role grants it and (for a scoped token) the token's scopes include it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Permission(StrEnum):
    PATIENT_READ = "patient:read"
    PATIENT_DEMOGRAPHICS = "patient:demographics"
    PREDICTION_READ = "prediction:read"
    PREDICTION_CREATE = "prediction:create"
    INGEST_WRITE = "ingest:write"
    MODEL_READ = "model:read"
    MODEL_MANAGE = "model:manage"
    AUDIT_READ = "audit:read"
    USER_MANAGE = "user:manage"
    METRICS_READ = "metrics:read"  # /metrics: operational counters only, no patient data


P = Permission
ROLES = ("clinician", "nurse", "data_scientist", "admin", "auditor")
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "clinician": frozenset({P.PATIENT_READ, P.PATIENT_DEMOGRAPHICS, P.PREDICTION_READ, P.PREDICTION_CREATE,
                            P.MODEL_READ}),
    "nurse": frozenset({P.PATIENT_READ, P.PATIENT_DEMOGRAPHICS, P.PREDICTION_READ, P.INGEST_WRITE}),
    "data_scientist": frozenset({P.PREDICTION_READ, P.PREDICTION_CREATE, P.MODEL_READ, P.MODEL_MANAGE,
                                 P.METRICS_READ}),
    "admin": frozenset({P.USER_MANAGE, P.MODEL_READ, P.MODEL_MANAGE, P.INGEST_WRITE, P.METRICS_READ}),
    "auditor": frozenset({P.AUDIT_READ}),
}
UNIT_RESTRICTED = frozenset({"clinician", "nurse"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `scopes` is None for a session, a set for a scoped API token."""

    user_id: int
    username: str
    role: str
    units: frozenset[str]
    scopes: frozenset[str] | None
    via: str  # "token" | "session" | "service"

    def can(self, permission: Permission) -> bool:
        if permission not in ROLE_PERMISSIONS.get(self.role, frozenset()):
            return False
        return self.scopes is None or str(permission) in self.scopes

    @property
    def unit_restricted(self) -> bool:
        return self.role in UNIT_RESTRICTED
