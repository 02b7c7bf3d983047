"""Security headers on every response, and strict CORS.

`init_app(app, settings)` adds, after every other response hook (so API, UI, CDS Hooks, error and health
answers all get them): a strict Content-Security-Policy (own scripts, styles and images only; no inline
script; no framing), X-Frame-Options DENY, X-Content-Type-Options nosniff, Referrer-Policy no-referrer,
Cross-Origin-Opener-Policy same-origin, `Cache-Control: no-store` on everything but the UI's static files
(any other answer may carry patient data), and HSTS outside development and test.

CORS: a response carries Access-Control-Allow-Origin only when the request's Origin is one of
`CARECAST_CORS_ORIGINS` and the path is the API or CDS Hooks (the UI is same-origin only). A preflight
(OPTIONS with Access-Control-Request-Method) from an allowed origin for a method the route serves is
answered 204 with the allowed method and headers; any other preflight is refused 403 without CORS headers.
Credentials (cookies) are never allowed cross-origin: the API and CDS Hooks take bearer tokens.
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Flask, Response, g, request

from carecast.config import Settings
from carecast.serving.errors import ApiError, handle_error
from carecast.serving.openapi import docs_page

EXTENSION = "carecast.headers"
STATIC_ENDPOINTS = frozenset({"ui.static", "static"})
CORS_PATH_PREFIXES = ("/api/", "/cds-services")
HSTS = "max-age=31536000; includeSubDomains"
HSTS_ENVIRONMENTS_WITHOUT = frozenset({"development", "test"})
PREFLIGHT_MAX_AGE_S = 600
# Request headers a cross-origin page may send (the rest of a preflight's list is refused).
CORS_ALLOWED_HEADERS = ("authorization", "content-type", "x-request-id", "last-event-id")
CORS_EXPOSED_HEADERS = "X-Request-ID, Retry-After, WWW-Authenticate"
_DOCS_ENDPOINT = "api_v1.docs"
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def _policy(style_hashes: tuple[str, ...] = ()) -> str:
    styles = " ".join(["'self'", *(f"'sha256-{h}'" for h in style_hashes)])
    return ("default-src 'none'; script-src 'self'; style-src " + styles + "; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'; object-src 'none'")


def _docs_style_hashes() -> tuple[str, ...]:
    """The API docs page is one self-contained file with a fixed inline stylesheet: allowed by its hash only."""
    html = docs_page({"paths": {}, "info": {"title": "", "version": "", "description": ""}})
    return tuple(base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
                 for block in _STYLE.findall(html))


CONTENT_SECURITY_POLICY = _policy()
DOCS_CONTENT_SECURITY_POLICY = _policy(_docs_style_hashes())


class CorsRefused(ApiError):
    http_status = 403
    code = "cors_refused"


class SecurityHeaders:
    """The headers and the CORS allow-list of one app."""

    def __init__(self, settings: Settings) -> None:
        self.hsts = settings.env not in HSTS_ENVIRONMENTS_WITHOUT
        self.origins = frozenset(settings.cors_origins)

    # -- CORS ----------------------------------------------------------------------------------------------

    def _cors_origin(self) -> str | None:
        """The request's Origin if it may read this answer cross-origin, else None."""
        origin = (request.headers.get("Origin") or "").strip().lower()
        if not origin or origin not in self.origins or not request.path.startswith(CORS_PATH_PREFIXES):
            return None
        return origin

    def preflight(self) -> Response | None:
        """Answer a CORS preflight before any view (or guard) runs; None for every other request."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if request.routing_exception is not None or request.url_rule is None:
            return None  # 404 / 405 as usual
        served = set(request.url_rule.methods or ()) - {"OPTIONS"}
        wanted = request.headers.get("Access-Control-Request-Method", "").strip().upper()
        asked = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
                 if h.strip()]
        origin = self._cors_origin()
        if origin is None or wanted not in served or any(h not in CORS_ALLOWED_HEADERS for h in asked):
            g.cors_refused = True  # the refusal itself carries no CORS headers, so the browser blocks
            return handle_error(CorsRefused("cross-origin request not allowed"))
        response = Response(status=204)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(served))
        if asked:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response

    # -- every response ------------------------------------------------------------------------------------

    def apply(self, response: Response) -> Response:
        headers = response.headers
        endpoint = request.endpoint or ""
        headers["Content-Security-Policy"] = (DOCS_CONTENT_SECURITY_POLICY if endpoint == _DOCS_ENDPOINT
                                              else CONTENT_SECURITY_POLICY)
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if endpoint not in STATIC_ENDPOINTS:
            headers["Cache-Control"] = "no-store"
            headers["Pragma"] = "no-cache"  # HTTP/1.0 caches
        if self.hsts:
            headers["Strict-Transport-Security"] = HSTS
        response.vary.add("Origin")
        origin = None if g.get("cors_refused") else self._cors_origin()
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        else:
            for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials"):
                headers.pop(name, None)
        return response


def init_app(app: Flask, settings: Settings) -> SecurityHeaders:
    """Register the preflight handler (a before-request hook: call this after the request context is set up)
    and the headers, as the app's last after-request hook whenever this is called (Flask runs the app's
    after-request hooks in reverse order of registration, after the blueprints' own)."""
    found = SecurityHeaders(settings)
    app.extensions[EXTENSION] = found
    app.before_request(found.preflight)
    app.after_request_funcs.setdefault(None, []).insert(0, found.apply)
    return found
