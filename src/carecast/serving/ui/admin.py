"""Administration pages (`user:manage`): users and their units, roles and what they may do, units, API tokens.

Every change is audited (one row). A new token is shown once, on the page that issued it; only its
hash is stored.
"""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, render_template, request, url_for

from carecast.errors import CareCastError
from carecast.security.passwords import MIN_LENGTH
from carecast.security.permissions import ROLE_PERMISSIONS, ROLES, UNIT_RESTRICTED, Permission
from carecast.security.tokens import MAX_TTL_HOURS, issue_token, list_tokens, revoke_token
from carecast.security.users import create_user, list_users, set_units
from carecast.serving.auth import audit
from carecast.serving.context import services
from carecast.serving.errors import FieldError, Unprocessable
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.session import UiAction, page
from carecast.store.accounts import active_user_id
from carecast.store.clinical import ClinicalReader

MAX_UNITS = 50
TTL_CHOICES = (1, 12, 24, 24 * 7, 24 * 30, 24 * 90)


def _units_field(raw: str | None) -> list[str]:
    """Units typed one per line or comma-separated."""
    units = sorted({u.strip() for part in (raw or "").splitlines() for u in part.split(",") if u.strip()})
    if len(units) > MAX_UNITS or any(len(u) > 64 for u in units):
        raise Unprocessable("too many or too long unit names",
                            fields=[FieldError("form", "units", f"at most {MAX_UNITS} units of 64 characters")])
    return units


def _known_units() -> list[str]:
    svc = services()
    found = set(ClinicalReader(svc.store.engine, svc.store.keyring).units())
    for user in list_users(svc.store.engine):
        found.update(str(u) for u in user["units"])  # type: ignore[attr-defined]
    return sorted(found)


@bp.get("/admin/users")
@page(Permission.USER_MANAGE)
def admin_users() -> str:
    users = list_users(services().store.engine)
    return render_template("admin_users.html", users=users, roles=ROLES, min_password=MIN_LENGTH,
                           restricted=UNIT_RESTRICTED, units=_known_units(), message=request.args.get("done"))


@bp.post("/admin/users")
@page(Permission.USER_MANAGE)
def admin_create_user() -> Any:
    form = request.form
    username = (form.get("username") or "").strip()
    role = form.get("role") or ""
    try:
        create_user(services().store.engine, username, form.get("password") or "", role,
                    _units_field(form.get("units")))
    except CareCastError as exc:
        audit(UiAction.USER_CREATE, "failed", detail="refused by the user rules")
        raise Unprocessable(exc.public_message) from None
    audit(UiAction.USER_CREATE, detail=f"{username} role={role}")
    return redirect(url_for("ui.admin_users", done=f"User {username} created."))


@bp.post("/admin/users/<username>/units")
@page(Permission.USER_MANAGE)
def admin_set_units(username: str) -> Any:
    units = _units_field(request.form.get("units"))
    try:
        set_units(services().store.engine, username, units)
    except CareCastError as exc:
        raise Unprocessable(exc.public_message) from None
    audit(UiAction.USER_UNITS, detail=f"{username} units={len(units)}")
    return redirect(url_for("ui.admin_users", done=f"Units of {username} saved."))


@bp.get("/admin/roles")
@page(Permission.USER_MANAGE)
def admin_roles() -> str:
    permissions = list(Permission)
    grid = [(role, [p in ROLE_PERMISSIONS[role] for p in permissions], role in UNIT_RESTRICTED) for role in ROLES]
    counts: dict[str, int] = {}
    for user in list_users(services().store.engine):
        counts[str(user["role"])] = counts.get(str(user["role"]), 0) + 1
    return render_template("admin_roles.html", permissions=permissions, grid=grid, counts=counts)


@bp.get("/admin/units")
@page(Permission.USER_MANAGE)
def admin_units() -> str:
    users = list_users(services().store.engine)
    members: dict[str, list[str]] = {u: [] for u in _known_units()}
    for user in users:
        for unit in user["units"]:  # type: ignore[attr-defined]
            members.setdefault(str(unit), []).append(str(user["username"]))
    return render_template("admin_units.html", members=sorted(members.items()))


@bp.get("/admin/tokens")
@page(Permission.USER_MANAGE)
def admin_tokens() -> str:
    return _tokens_page()


def _tokens_page(new_token: str | None = None, status: int = 200) -> Any:
    engine = services().store.engine
    html = render_template("admin_tokens.html", tokens=list_tokens(engine), users=list_users(engine),
                           scopes=[str(p) for p in Permission], ttl_choices=TTL_CHOICES, new_token=new_token,
                           message=request.args.get("done"))
    return Response(html, status=status, mimetype="text/html") if new_token else html


@bp.post("/admin/tokens")
@page(Permission.USER_MANAGE)
def admin_issue_token() -> Any:
    form = request.form
    engine = services().store.engine
    uid = active_user_id(engine, form.get("username") or "")
    if uid is None:
        raise Unprocessable("choose an active user", fields=[FieldError("form", "username", "unknown or inactive")])
    username = form.get("username") or ""
    try:
        hours = float(form.get("ttl_hours") or 24)
    except ValueError:
        raise Unprocessable("the lifetime must be a number of hours") from None
    if not 0 < hours <= MAX_TTL_HOURS:
        raise Unprocessable(f"a token lives between 1 and {MAX_TTL_HOURS} hours")
    name = (form.get("name") or "web").strip()[:64] or "web"
    scopes = form.getlist("scopes")
    try:
        token = issue_token(engine, uid, name, scopes, ttl_hours=hours)
    except CareCastError as exc:
        raise Unprocessable(exc.public_message) from None
    audit(UiAction.TOKEN_ISSUE, detail=f"for {username} scopes={len(scopes)} hours={hours:g}")
    return _tokens_page(new_token=token, status=201)


@bp.post("/admin/tokens/<int:token_id>/revoke")
@page(Permission.USER_MANAGE)
def admin_revoke_token(token_id: int) -> Any:
    revoke_token(services().store.engine, token_id)
    audit(UiAction.TOKEN_REVOKE, detail=f"token {token_id}")
    return redirect(url_for("ui.admin_tokens", done=f"Token {token_id} revoked."))
