"""CDS Hooks authentication: the EHR clients registered with their public keys, and the checks of the signed
JWT every call carries.

A token is accepted only if all of these hold: an asymmetric algorithm (ES384, RS384, ES256, RS256; never
`none` or HMAC) that fits the registered key; a registered issuer (`iss`) and key id (`kid`); a valid
signature; `aud` naming the service URL called; `exp` and `iat` present, not expired, not issued in the
future, and at most MAX_LIFETIME apart; a `jti` this client has not used before. Keys come only from the
registration, never from the token (`jwk`, `jku` and `x5c` headers are ignored).

No Flask here: serving hands in the token and the URLs it answers at, and turns a `CdsAuthError` into a 401.
Refusal reasons are fixed texts, never a token's contents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from carecast.errors import CareCastError, ExitCode
from carecast.store import schema as S

ALGORITHMS = ("ES384", "RS384", "ES256", "RS256")
LEEWAY = timedelta(seconds=30)  # clock skew tolerated between the EHR and CareCast
MAX_LIFETIME = timedelta(hours=1)  # CDS Hooks asks for about 5 minutes; longer-lived tokens are refused
MAX_TOKEN_LENGTH = 16_384
MAX_ISS_LENGTH = 255
MAX_JTI_LENGTH = 255
MIN_RSA_BITS = 2048
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
_KID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_ISS = re.compile(r"[!-~]{1,255}")  # printable ASCII, no spaces
# Which algorithms each kind of registered key may sign with.
_EC_ALGORITHMS = {"P-256": ("ES256",), "P-384": ("ES384",)}
_RSA_ALGORITHMS = ("RS256", "RS384")
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}


class CdsAuthError(CareCastError):
    """A refused CDS Hooks token. The message is a fixed reason (for the audit trail), never token content;
    `client_id` is set once the token's issuer is known to be a registered client."""

    http_status = 401

    def __init__(self, reason: str, client_id: int | None = None) -> None:
        super().__init__(reason)
        self.client_id = client_id


class CdsClientError(CareCastError):
    """A registration that cannot be accepted (a key that is private, weak or of an unsupported kind)."""

    http_status = 400
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class RegisteredClient:
    id: int
    iss: str
    audience: str | None
    kids: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check, and the client that signed it."""

    client_id: int
    iss: str
    audience: str | None  # the client's registered public base URL, if any
    kid: str
    expires_at: datetime


# -- keys ---------------------------------------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint of a public JWK (SHA-256, base64url): the default key id."""
    members = _PUBLIC_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise CdsClientError("only EC (P-256, P-384) and RSA keys are accepted")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _checked_public_key(key: Any) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CdsClientError("EC keys must be on curve P-256 or P-384")
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CdsClientError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        raise CdsClientError("only EC (P-256, P-384) and RSA keys are accepted")
    return {m: jwk[m] for m in _PUBLIC_MEMBERS[jwk["kty"]]}


def _with_kid(jwk: dict[str, Any], kid: str | None) -> dict[str, Any]:
    kid = kid or thumbprint(jwk)
    if not _KID.fullmatch(kid):
        raise CdsClientError("a key id is 1 to 128 letters, digits or . _ : -")
    return {**jwk, "kid": kid, "use": "sig"}


def public_jwk_from_pem(pem: bytes, kid: str | None = None) -> dict[str, Any]:
    """A PEM public key (SubjectPublicKeyInfo, or an X.509 certificate) as a public JWK with a key id."""
    try:
        if b"BEGIN CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError:
        if b"PRIVATE KEY" in pem:
            raise CdsClientError("that is a private key: register the client's public key only") from None
        raise CdsClientError("not a PEM public key or certificate") from None
    return _with_kid(_checked_public_key(key), kid)


def public_jwks_from_json(text: str) -> list[dict[str, Any]]:
    """The keys of a JWK Set (or of a single JWK), each checked to be a public EC or RSA key with a key id."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise CdsClientError("the JWK Set is not valid JSON") from None
    items = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
    if not isinstance(items, list) or not items:
        raise CdsClientError("the JWK Set has no keys")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise CdsClientError("a JWK is not a JSON object")
        if any(m in item for m in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise CdsClientError("the JWK Set holds a private or symmetric key: register public keys only")
        key, _ = _load_jwk(item)
        kid = item.get("kid")
        out.append(_with_kid(_checked_public_key(key), kid if isinstance(kid, str) else None))
    return out


def _load_jwk(jwk: Mapping[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """The public key object of a stored JWK and the algorithms it may sign with."""
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            algorithms = _EC_ALGORITHMS.get(str(jwk.get("crv")))
            if algorithms is None:
                raise CdsClientError("EC keys must be on curve P-256 or P-384")
            return ECAlgorithm.from_jwk(dict(jwk)), algorithms
        if kty == "RSA":
            return RSAAlgorithm.from_jwk(dict(jwk)), _RSA_ALGORITHMS
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
        raise CdsClientError("a JWK could not be read as a public key") from None
    raise CdsClientError("only EC (P-256, P-384) and RSA keys are accepted")


# -- registration -------------------------------------------------------------------------------------------------

def _check_iss(iss: str) -> str:
    if not _ISS.fullmatch(iss):
        raise CdsClientError(f"an issuer is 1 to {MAX_ISS_LENGTH} printable characters without spaces")
    return iss


def _check_audience(audience: str) -> str:
    parts = urlsplit(audience)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
            or len(audience) > 255:
        raise CdsClientError("the audience is the public base URL of CareCast, e.g. https://carecast.example.org")
    return audience.rstrip("/")


def _keys(jwks_text: str) -> list[dict[str, Any]]:
    doc = json.loads(jwks_text)
    return [k for k in doc.get("keys", []) if isinstance(k, dict)]


def register_client(engine: Engine, iss: str, keys: Iterable[Mapping[str, Any]], *, audience: str | None = None,
                    now: datetime | None = None) -> RegisteredClient:
    """Register an EHR client, or add keys to one already registered (a key with the same id is replaced,
    which is how keys rotate). `audience`, when given, pins the public base URL its tokens must name."""
    iss = _check_iss(iss)
    new = [dict(k) for k in keys]
    if not new:
        raise CdsClientError("a client needs at least one public key")
    for k in new:
        _load_jwk(k)
        if not isinstance(k.get("kid"), str) or not _KID.fullmatch(k["kid"]):
            raise CdsClientError("every key needs a key id")
    base = _check_audience(audience) if audience else None
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        row = conn.execute(select(S.CdsClient).where(S.CdsClient.iss == iss)).first()
        if row is None:
            jwks = {"keys": new}
            conn.execute(insert(S.CdsClient).values(iss=iss, jwks=json.dumps(jwks), audience=base, created_at=now,
                                                    updated_at=now))
        else:
            kids = {k["kid"] for k in new}
            jwks = {"keys": [k for k in _keys(row.jwks) if k.get("kid") not in kids] + new}
            conn.execute(update(S.CdsClient).where(S.CdsClient.id == row.id).values(
                jwks=json.dumps(jwks), audience=base if base is not None else row.audience, updated_at=now))
        found = conn.execute(select(S.CdsClient).where(S.CdsClient.iss == iss)).one()
    return _client(found)


def _client(row: Any) -> RegisteredClient:
    return RegisteredClient(id=int(row.id), iss=row.iss, audience=row.audience,
                            kids=tuple(str(k.get("kid")) for k in _keys(row.jwks)))


def list_clients(engine: Engine) -> list[RegisteredClient]:
    with engine.connect() as conn:
        return [_client(r) for r in conn.execute(select(S.CdsClient).order_by(S.CdsClient.id))]


def remove_client(engine: Engine, iss: str) -> bool:
    """Remove a client (and its seen token ids): its tokens are refused from now on. False if unknown."""
    with engine.begin() as conn:
        row = conn.execute(select(S.CdsClient.id).where(S.CdsClient.iss == iss)).first()
        if row is None:
            return False
        conn.execute(delete(S.CdsJti).where(S.CdsJti.client_id == row.id))
        conn.execute(delete(S.CdsClient).where(S.CdsClient.id == row.id))
    return True


# -- verification -------------------------------------------------------------------------------------------------

def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise CdsAuthError("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        # only to find the issuer whose keys then verify it (_signed_claims names the algorithm)
        claims = jwt.decode(token, options={"verify_signature": False})  # nosemgrep: lint.jwt-decode-names-algorithms
    except (jwt.PyJWTError, ValueError, TypeError):
        raise CdsAuthError("malformed token") from None
    return header, claims


def _signed_claims(token: str, key: Any, alg: str, audiences: list[str], iss: str, client_id: int) -> dict[str, Any]:
    try:
        found: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience=audiences, issuer=iss, leeway=LEEWAY,
            options={"require": list(REQUIRED_CLAIMS), "verify_signature": True, "verify_exp": True,
                     "verify_iat": True, "verify_aud": True, "verify_iss": True})
    except jwt.ExpiredSignatureError:
        raise CdsAuthError("expired token", client_id) from None
    except jwt.InvalidSignatureError:
        raise CdsAuthError("bad signature", client_id) from None
    except jwt.MissingRequiredClaimError as exc:
        claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "a required claim"
        raise CdsAuthError(f"token without {claim}", client_id) from None
    except jwt.InvalidAudienceError:
        raise CdsAuthError("wrong audience", client_id) from None
    except jwt.ImmatureSignatureError:
        raise CdsAuthError("token issued in the future", client_id) from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise CdsAuthError("invalid token", client_id) from None
    return found


def _remember_jti(engine: Engine, client_id: int, jti: str, expires_at: datetime, now: datetime) -> None:
    """Store the token id until its token expires; a second use violates the primary key: a replay."""
    digest = hashlib.sha256(jti.encode("utf-8")).hexdigest()
    try:
        with engine.begin() as conn:
            conn.execute(delete(S.CdsJti).where(S.CdsJti.client_id == client_id, S.CdsJti.expires_at < now))
            conn.execute(insert(S.CdsJti).values(client_id=client_id, jti_hash=digest, expires_at=expires_at))
    except IntegrityError:
        raise CdsAuthError("replayed token (jti already used)", client_id) from None


def verify_token(engine: Engine, token: str, *, paths: Sequence[str], request_base: str) -> VerifiedToken:
    """Check a CDS Hooks bearer token; raises CdsAuthError with a fixed reason when any check fails.

    The accepted audiences are `<base><path>` for each of `paths`, where base is the client's registered
    audience or, when it has none, `request_base` (the scheme and host the request arrived at)."""
    header, claims = _unverified(token)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise CdsAuthError("algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise CdsAuthError("token without a key id")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not _ISS.fullmatch(iss):
        raise CdsAuthError("token without an issuer")
    with engine.connect() as conn:
        row = conn.execute(select(S.CdsClient).where(S.CdsClient.iss == iss)).first()
    if row is None:
        raise CdsAuthError("unknown issuer")
    client_id = int(row.id)
    jwk = next((k for k in _keys(row.jwks) if k.get("kid") == kid), None)
    if jwk is None:
        raise CdsAuthError("unknown key id", client_id)
    try:
        key, allowed = _load_jwk(jwk)
    except CdsClientError:
        raise CdsAuthError("registered key unusable", client_id) from None
    if alg not in allowed:
        raise CdsAuthError("algorithm does not fit the registered key", client_id)
    base = (row.audience or request_base).rstrip("/")
    payload = _signed_claims(token, key, alg, [base + p for p in paths], iss, client_id)
    now_ts = time.time()
    exp, iat = float(payload["exp"]), float(payload["iat"])
    longest = MAX_LIFETIME.total_seconds() + LEEWAY.total_seconds()
    if exp - now_ts > longest or exp - iat > longest:
        raise CdsAuthError("token lifetime too long", client_id)
    jti = payload["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise CdsAuthError("token without a usable jti", client_id)
    expires_at = datetime.fromtimestamp(exp, UTC) + LEEWAY
    _remember_jti(engine, client_id, jti, expires_at, datetime.fromtimestamp(now_ts, UTC))
    return VerifiedToken(client_id=client_id, iss=iss, audience=row.audience, kid=kid, expires_at=expires_at)


def purge_expired(engine: Engine, now: datetime | None = None) -> int:
    """Forget token ids whose tokens have expired (they can no longer be replayed). Returns rows removed."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        return int(conn.execute(delete(S.CdsJti).where(S.CdsJti.expires_at < now)).rowcount or 0)
