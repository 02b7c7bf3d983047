"""Sign-in, sign-out, the idle keep-alive and the landing page."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, g, jsonify, redirect, render_template, request, url_for

from carecast.security.users import authenticate
from carecast.serving.auth import Action, audit, check_sign_in_allowed, count_failed_sign_in, public
from carecast.serving.context import services
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.session import (
    UiAction,
    current_user,
    home_endpoint,
    remaining_seconds,
    safe_next,
    sign_in,
    sign_out,
    signed_in,
)

_USERNAME = re.compile(r"[A-Za-z0-9._\-]{1,64}")
MAX_PASSWORD = 1024
REASONS = {"idle": "You were signed out after a period without activity.",
           "signed-out": "You have signed out."}


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Any:
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user(touch=False) is not None:
            return redirect(target or url_for(home_endpoint(g.principal)))
        return render_template("login.html", next=target, notice=REASONS.get(request.args.get("reason", "")),
                               error=None)
    check_sign_in_allowed()  # 429 before the password is even looked at when this address failed too often
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    who = None
    if _USERNAME.fullmatch(username) and 0 < len(password) <= MAX_PASSWORD:
        who = authenticate(services().store.engine, username, password)
    if who is None:
        # The name is recorded only if it could be a username (never something typed into the wrong field).
        services().audit.record(action=Action.AUTH_FAILED, outcome="denied", source_ip=request.remote_addr,
                                username=username if _USERNAME.fullmatch(username) else None,
                                request_id=getattr(g, "request_id", None), detail="web sign-in refused")
        count_failed_sign_in()
        html = render_template("login.html", next=target, notice=None,
                               error="Wrong username or password, or the account is locked for 15 minutes "
                                     "after 5 failed attempts.")
        return Response(html, status=401, mimetype="text/html")
    sign_in(who)
    audit(UiAction.LOGIN, detail="web session", who=who)
    return redirect(target or url_for(home_endpoint(who)))


@bp.post("/logout")
@public
def logout() -> Any:
    who = current_user(touch=False)
    idle = request.form.get("reason") == "idle"
    if who is not None:
        audit(UiAction.LOGOFF_IDLE if idle else UiAction.LOGOUT, detail="idle warning ran out" if idle else None,
              who=who)
    sign_out()
    return redirect(url_for("ui.login", reason="idle" if idle else "signed-out"))


@bp.post("/session/keepalive")
@signed_in()
def keepalive() -> Response:
    """The idle warning's "stay signed in": counts as activity."""
    return jsonify({"remaining": round(remaining_seconds(), 1)})


@bp.get("/session/status")
@signed_in(touch=False)
def session_status() -> Response:
    """Seconds left before the idle logoff (asked by the page's timer; not activity)."""
    return jsonify({"remaining": round(remaining_seconds(), 1)})


@bp.get("/")
@signed_in()
def home() -> Any:
    return redirect(url_for(home_endpoint(g.principal)))


@bp.get("/account")
@signed_in()
def account() -> str:
    return render_template("account.html")
