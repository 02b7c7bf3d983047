"""FHIR store -> CareCast relay: Pub/Sub push notifications of a Cloud Healthcare API FHIR store, turned into
FHIR `batch` Bundles posted to CareCast's `POST /api/v1/ingest/fhir`.

The FHIR store must be configured with `sendFullResource: true`, so each notification carries the created,
updated or patched resource itself (base64 JSON in `message.data`; `message.attributes.action` says what
happened). Deletions are acknowledged and skipped (CareCast keeps what it has scored). A push is answered:

- 204 when the resource was stored, or will never be storable (not a resource, a deletion, or refused by
  CareCast with 422: it is then in CareCast's quarantine) -- Pub/Sub then drops the message;
- 503 when CareCast is unreachable, overloaded (429) or failing (5xx) -- Pub/Sub retries with backoff.

Standard library only (a WSGI app): `gunicorn relay:app`. Settings from the environment:
CARECAST_API_URL (e.g. https://carecast-api-xyz.a.run.app) and CARECAST_INGEST_TOKEN (a token scoped to
ingest:write, from Secret Manager). Logs carry message ids, resource types and statuses: never resource
contents or ids (they are patient data).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("carecast.relay")

# FhirNotificationConfig actions that carry a resource to store.
STORE_ACTIONS = frozenset({"CreateResource", "UpdateResource", "PatchResource"})
MAX_PUSH_BYTES = 10 * 1024 * 1024

# (url, body, headers) -> HTTP status of CareCast's answer
Post = Callable[[str, bytes, dict[str, str]], int]


def bundle_of(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """The batch Bundle for one push envelope, or None when there is nothing to store."""
    message = envelope.get("message")
    if not isinstance(message, dict):
        raise ValueError("the push body has no message")
    attributes = message.get("attributes") or {}
    if attributes.get("action", "CreateResource") not in STORE_ACTIONS:
        return None
    try:
        resource = json.loads(base64.b64decode(message.get("data") or "", validate=True))
    except (binascii.Error, ValueError):
        return None  # a resource name only: the store does not send full resources
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return None
    if resource["resourceType"] == "Bundle":
        return resource
    return {"resourceType": "Bundle", "type": "batch",
            "entry": [{"resource": resource,
                       "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource.get('id', '')}"}}]}


def urllib_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (https URL)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 599  # unreachable: retried like a server error


class Relay:
    def __init__(self, api_url: str, token: str, post: Post = urllib_post) -> None:
        self.ingest_url = api_url.rstrip("/") + "/api/v1/ingest/fhir"
        self.token = token
        self.post = post

    def handle(self, envelope: dict[str, Any]) -> int:
        """The status to answer Pub/Sub for one push envelope."""
        message_id = str((envelope.get("message") or {}).get("messageId", "?"))
        bundle = bundle_of(envelope)
        if bundle is None:
            log.info("message %s: nothing to store, acknowledged", message_id)
            return 204
        status = self.post(self.ingest_url, json.dumps(bundle).encode(), {
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"})
        kind = bundle["entry"][0]["resource"].get("resourceType") if bundle.get("entry") else "Bundle"
        log.info("message %s: %s -> CareCast %d", message_id, kind, status)
        if status == 200 or status == 422:
            return 204
        return 503

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("Allow", "POST")])
            return [b""]
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size = 0
        if not 0 < size <= MAX_PUSH_BYTES:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"a Pub/Sub push body is expected"]
        try:
            envelope = json.loads(environ["wsgi.input"].read(size))
            status = self.handle(envelope)
        except (ValueError, AttributeError):
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"a Pub/Sub push body is expected"]
        start_response({204: "204 No Content", 503: "503 Service Unavailable"}[status], [])
        return [b""]


def from_env() -> Relay:
    return Relay(os.environ["CARECAST_API_URL"], os.environ["CARECAST_INGEST_TOKEN"])


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point (`gunicorn relay:app`), built from the environment on first use."""
    global _relay
    if _relay is None:
        logging.basicConfig(level=logging.INFO)
        _relay = from_env()
    return _relay(environ, start_response)


_relay: Relay | None = None
