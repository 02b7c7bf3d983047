"""CDS Hooks JWTs: client registration (public keys only) and every check of a token, on both backends.

The helpers here (`Signer`, `make_token`, `alg_none_token`, `hs256_confusion_token`) are also used by the
serving tests of the CDS Hooks endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select

from carecast.cli import main
from carecast.security import cds_jwt
from carecast.security.cds_jwt import CdsAuthError, CdsClientError, register_client, verify_token
from carecast.store import Store
from carecast.store import schema as S

ISS = "https://ehr.example.org/cds-client-7f3a"
BASE = "http://localhost/"
PATH = "/cds-services/carecast-deterioration"
AUD = "http://localhost/cds-services/carecast-deterioration"
OMIT = object()


@dataclass(frozen=True)
class Signer:
    """A private key of an EHR, the algorithm it signs with and the key id it was registered under."""

    key: Any
    alg: str
    kid: str

    def public_pem(self) -> bytes:
        return bytes(self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))


def ec_signer(kid: str = "ehr-es384", curve: ec.EllipticCurve | None = None, alg: str = "ES384") -> Signer:
    return Signer(ec.generate_private_key(curve or ec.SECP384R1()), alg, kid)


def rsa_signer(kid: str = "ehr-rs384", alg: str = "RS384", bits: int = 2048) -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=bits), alg, kid)


def register(store: Store, signer: Signer, iss: str = ISS, audience: str | None = None) -> cds_jwt.RegisteredClient:
    return register_client(store.engine, iss, [cds_jwt.public_jwk_from_pem(signer.public_pem(), signer.kid)],
                           audience=audience)


def claims(iss: str = ISS, aud: str | list[str] = AUD, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": iss, "sub": "ehr-client", "aud": aud, "exp": now + 300, "iat": now,
                               "jti": str(uuid.uuid4())}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not OMIT}


def make_token(signer: Signer, iss: str = ISS, aud: str | list[str] = AUD, *, kid: Any = None,
               **overrides: Any) -> str:
    headers = {"typ": "JWT"}
    if kid is not OMIT:
        headers["kid"] = kid or signer.kid
    return jwt.encode(claims(iss, aud, **overrides), signer.key, algorithm=signer.alg, headers=headers)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def alg_none_token(kid: str, iss: str = ISS, aud: str = AUD) -> str:
    """An unsigned token crafted by hand: header {"alg": "none"}, the claims, and an empty signature."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64(claims(iss, aud))}."


def hs256_confusion_token(signer: Signer, iss: str = ISS, aud: str = AUD) -> str:
    """The classic key-confusion attack: HS256 with the client's *public* key bytes as the HMAC secret."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': signer.kid})}.{_b64(claims(iss, aud))}"
    mac = hmac.new(signer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _verify(store: Store, token: str, base: str = BASE) -> cds_jwt.VerifiedToken:
    return verify_token(store.engine, token, paths=[PATH], request_base=base)


def _refused(store: Store, token: str, reason: str, base: str = BASE) -> CdsAuthError:
    with pytest.raises(CdsAuthError) as caught:
        _verify(store, token, base)
    assert caught.value.public_message.startswith(reason), caught.value.public_message
    assert caught.value.http_status == 401
    return caught.value


# -- accepted tokens ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: ec_signer(), lambda: rsa_signer(), lambda: ec_signer("p256", ec.SECP256R1(), "ES256"),
    lambda: rsa_signer("rs256", "RS256"),
], ids=["ES384", "RS384", "ES256", "RS256"])
def test_a_valid_token_of_each_allowed_algorithm_is_accepted(store: Store, make: Any) -> None:
    signer = make()
    client = register(store, signer)
    verified = _verify(store, make_token(signer))
    assert verified.client_id == client.id and verified.iss == ISS and verified.kid == signer.kid
    assert verified.expires_at > datetime.now(UTC)


def test_an_audience_list_naming_the_service_is_accepted(store: Store) -> None:
    signer = ec_signer()
    register(store, signer)
    _verify(store, make_token(signer, aud=["https://elsewhere.example/x", AUD]))


def test_a_registered_audience_pins_the_base_url(store: Store) -> None:
    signer = ec_signer()
    register(store, signer, audience="https://carecast.hospital.example/")
    pinned = "https://carecast.hospital.example/cds-services/carecast-deterioration"
    _verify(store, make_token(signer, aud=pinned), base="http://10.0.0.7:8000/")
    # the URL the request arrived at no longer counts once the audience is pinned
    _refused(store, make_token(signer, aud="http://10.0.0.7:8000/cds-services/carecast-deterioration"),
             "wrong audience", base="http://10.0.0.7:8000/")


# -- refused tokens -----------------------------------------------------------------------------------------------

def test_refusals(store: Store) -> None:
    signer = ec_signer()
    client = register(store, signer)
    now = int(time.time())
    other = ec_signer()  # same kid, another key: a bad signature
    cases: list[tuple[str, str]] = [
        (make_token(signer, exp=now - 120, iat=now - 420), "expired token"),
        (make_token(signer, aud="http://localhost/cds-services/another-service"), "wrong audience"),
        (make_token(signer, aud="https://attacker.example/cds-services/carecast-deterioration"), "wrong audience"),
        (alg_none_token(signer.kid), "algorithm not allowed"),
        (hs256_confusion_token(signer), "algorithm not allowed"),
        (make_token(other), "bad signature"),
        (make_token(signer, iss="https://unknown-ehr.example"), "unknown issuer"),
        (make_token(signer, kid="not-registered"), "unknown key id"),
        (make_token(signer, kid=OMIT), "token without a key id"),
        (make_token(signer, jti=OMIT), "token without jti"),
        (make_token(signer, exp=OMIT), "token without exp"),
        (make_token(signer, iat=OMIT), "token without iat"),
        (make_token(signer, aud=OMIT), "token without aud"),
        (make_token(signer, iss=OMIT), "token without an issuer"),
        (make_token(signer, iat=now + 600, exp=now + 900), "token issued in the future"),
        (make_token(signer, exp=now + 2 * 3600), "token lifetime too long"),
        (make_token(signer, jti=""), "token without a usable jti"),
        ("not-a-jwt", "malformed token"),
        ("a.b.c", "malformed token"),
        ("x" * 20_000, "malformed token"),
    ]
    for token, reason in cases:
        error = _refused(store, token, reason)
        assert ISS not in error.public_message and token not in error.public_message
        known = reason not in ("unknown issuer", "algorithm not allowed", "malformed token", "token without a key id",
                               "token without an issuer")
        assert error.client_id == (client.id if known else None), reason


def test_an_rsa_algorithm_on_an_ec_key_id_is_refused(store: Store) -> None:
    ec_key, rsa_key = ec_signer("shared-kid"), rsa_signer("shared-kid")
    register(store, ec_key)
    _refused(store, make_token(rsa_key), "algorithm does not fit the registered key")
    p256 = ec_signer("p256", ec.SECP256R1(), "ES256")
    register(store, p256)
    _verify(store, make_token(p256))
    forged = jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384",
                        headers={"kid": "p256"})
    _refused(store, forged, "algorithm does not fit the registered key")


def test_a_replayed_jti_is_refused_until_it_expires(store: Store) -> None:
    signer = ec_signer()
    client = register(store, signer)
    token = make_token(signer)
    _verify(store, token)
    assert _refused(store, token, "replayed token").client_id == client.id
    # the same jti in a fresh token is a replay too; another client may use the same jti
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    _refused(store, make_token(signer, jti=jti), "replayed token")
    second = ec_signer("second")
    register(store, second, iss="https://other-ehr.example")
    _verify(store, make_token(second, iss="https://other-ehr.example", jti=jti))
    with store.engine.connect() as conn:
        stored = conn.execute(select(S.CdsJti.jti_hash)).scalars().all()
    assert len(stored) == 2 and jti not in stored  # kept as a hash only


def test_expired_token_ids_are_purged(store: Store) -> None:
    signer = ec_signer()
    register(store, signer)
    _verify(store, make_token(signer))
    assert cds_jwt.purge_expired(store.engine) == 0
    assert cds_jwt.purge_expired(store.engine, now=datetime.now(UTC) + timedelta(hours=2)) == 1
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(S.CdsJti)).scalar_one() == 0


# -- registration -------------------------------------------------------------------------------------------------

def test_register_refuses_private_weak_and_unsupported_keys(store: Store) -> None:
    private_pem = ec_signer().key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
    with pytest.raises(CdsClientError, match="private key"):
        cds_jwt.public_jwk_from_pem(private_pem)
    with pytest.raises(CdsClientError, match="at least 2048 bits"):
        cds_jwt.public_jwk_from_pem(rsa_signer(bits=1024).public_pem())
    with pytest.raises(CdsClientError, match="P-256 or P-384"):
        cds_jwt.public_jwk_from_pem(ec_signer(curve=ec.SECP521R1()).public_pem())
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CdsClientError, match="only EC"):
        cds_jwt.public_jwk_from_pem(ed)
    with pytest.raises(CdsClientError, match="not a PEM"):
        cds_jwt.public_jwk_from_pem(b"hello")
    secret = jwt.algorithms.ECAlgorithm.to_jwk(ec_signer().key, as_dict=True)
    with pytest.raises(CdsClientError, match="private or symmetric"):
        cds_jwt.public_jwks_from_json(json.dumps({"keys": [secret]}))
    with pytest.raises(CdsClientError, match="private or symmetric"):
        cds_jwt.public_jwks_from_json(json.dumps({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}))
    with pytest.raises(CdsClientError):
        register_client(store.engine, "has spaces in it", [cds_jwt.public_jwk_from_pem(ec_signer().public_pem())])
    with pytest.raises(CdsClientError, match="audience"):
        register(store, ec_signer(), audience="ftp://nope")
    with pytest.raises(CdsClientError, match="at least one"):
        register_client(store.engine, ISS, [])


def test_default_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key and thumbprint
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZ"
                "CiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZ"
                "gnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
                "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert cds_jwt.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert cds_jwt.public_jwks_from_json(json.dumps({"keys": [{k: v for k, v in jwk.items() if k != "kid"}]}))[0][
        "kid"] == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_keys_rotate_by_kid_and_a_removed_client_is_refused(store: Store) -> None:
    old, new = ec_signer("k1"), ec_signer("k2")
    register(store, old)
    register(store, new)
    [client] = cds_jwt.list_clients(store.engine)
    assert client.kids == ("k1", "k2")
    replacement = ec_signer("k1")
    register(store, replacement)  # same kid: the old key is replaced
    _refused(store, make_token(old), "bad signature")
    _verify(store, make_token(replacement))
    _verify(store, make_token(new))
    assert cds_jwt.remove_client(store.engine, ISS) and not cds_jwt.remove_client(store.engine, ISS)
    _refused(store, make_token(new), "unknown issuer")


def test_cli_registers_lists_and_removes_a_client(store: Store, database_url: str, tmp_path: Path) -> None:
    env = {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_DATABASE_URL": database_url}
    signer = rsa_signer()
    pem = tmp_path / "ehr.pem"
    pem.write_bytes(signer.public_pem())
    runner = CliRunner()
    result = runner.invoke(main, ["cds", "register-client", "--iss", ISS, "--public-key", str(pem), "--kid",
                                  signer.kid], env=env)
    assert result.exit_code == 0, result.output
    assert signer.kid in result.output
    _verify(store, make_token(signer))
    jwks = tmp_path / "jwks.json"
    second = ec_signer("from-jwks")
    jwks.write_text(json.dumps({"keys": [cds_jwt.public_jwk_from_pem(second.public_pem(), second.kid)]}))
    assert runner.invoke(main, ["cds", "register-client", "--iss", ISS, "--jwks", str(jwks)], env=env).exit_code == 0
    listed = runner.invoke(main, ["cds", "list-clients"], env=env)
    assert listed.exit_code == 0 and "from-jwks" in listed.output and signer.kid in listed.output
    both = runner.invoke(main, ["cds", "register-client", "--iss", ISS, "--public-key", str(pem), "--jwks",
                                str(jwks)], env=env)
    assert both.exit_code != 0 and "exactly one" in both.output
    private = tmp_path / "private.pem"
    private.write_bytes(signer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    refused = runner.invoke(main, ["cds", "register-client", "--iss", ISS, "--public-key", str(private)], env=env)
    assert refused.exit_code != 0 and "private key" in refused.output and "BEGIN" not in refused.output
    assert runner.invoke(main, ["cds", "remove-client", "--iss", ISS], env=env).exit_code == 0
    assert runner.invoke(main, ["cds", "remove-client", "--iss", ISS], env=env).exit_code != 0
    _refused(store, make_token(signer), "unknown issuer")
