"""Settings: every CARECAST_* environment variable declared once, with type, default and doc.

`Settings.from_env()` builds one frozen object; a bad value raises ConfigError naming the
variable (never its value, which may be a secret).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from carecast.errors import ConfigError

T = TypeVar("T")

ENVIRONMENTS = ("development", "test", "production")


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    """One environment variable: its name, how to parse it, its default and what it does."""

    name: str
    parse: Callable[[str], T]
    default: T | None
    doc: str
    secret: bool = False

    def read(self, environ: Mapping[str, str]) -> T | None:
        raw = environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except (TypeError, ValueError) as exc:
            shown = "" if self.secret else f" (got {raw!r})"
            raise ConfigError(f"{self.name} has an invalid value{shown}: {exc}") from None


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value


def _database_url(raw: str) -> str:
    if not raw.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise ValueError("expected a sqlite:/// or postgresql:// URL")
    return raw


CARECAST_ENV = EnvVar("CARECAST_ENV", _choice(*ENVIRONMENTS), "development",
                      "Deployment environment: development, test or production. Production refuses "
                      "to start without an explicit data key.")
CARECAST_DATA_DIR = EnvVar("CARECAST_DATA_DIR", Path, Path("var"),
                           "Directory for the embedded database, key file, models and reports.")
CARECAST_DATABASE_URL = EnvVar("CARECAST_DATABASE_URL", _database_url, None,
                               "SQLAlchemy URL of the store. Default: SQLite (WAL) at "
                               "$CARECAST_DATA_DIR/carecast.db. PostgreSQL: postgresql+psycopg://...")
CARECAST_DATA_KEY = EnvVar("CARECAST_DATA_KEY", str, None,
                           "Base64 of a 32-byte master key for field encryption and blind indexes. "
                           "If unset, a key file is used (created on first run outside production).",
                           secret=True)
CARECAST_KEY_FILE = EnvVar("CARECAST_KEY_FILE", Path, None,
                           "Path of the local keyring file (mode 0600). Default: "
                           "$CARECAST_DATA_DIR/keys/keyring.json.")


def _kms_key_name(raw: str) -> str:
    parts = raw.strip().split("/")
    if (len(parts) != 8 or parts[0::2] != ["projects", "locations", "keyRings", "cryptoKeys"]
            or not all(parts[1::2])):
        raise ValueError("expected projects/P/locations/L/keyRings/R/cryptoKeys/K")
    return raw.strip()


CARECAST_KMS_KEY = EnvVar("CARECAST_KMS_KEY", _kms_key_name, None,
                          "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that wraps the data key "
                          "(envelope encryption): CARECAST_DATA_KEY, or the key file, then holds the base64 of "
                          "the wrapped key, unwrapped by Cloud KMS at start. Needs google-cloud-kms.")
CARECAST_LOG_LEVEL = EnvVar("CARECAST_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info",
                            "Log level of the structured logs: debug, info, warning or error.")
CARECAST_INGEST_CHUNK = EnvVar("CARECAST_INGEST_CHUNK", _positive_int, 5000,
                               "Records written per database transaction during bulk ingestion.")

CARECAST_MODEL_REGISTRY = EnvVar("CARECAST_MODEL_REGISTRY", str, None,
                                 "Where models and their cards live: a directory or an fsspec URL such as "
                                 "gs://bucket/models. Default: $CARECAST_DATA_DIR/models.")

CARECAST_QUEUE_URL = EnvVar("CARECAST_QUEUE_URL", str, None,
                            "Scoring queue: a redis:// URL, or unset to keep the queue in the database "
                            "(durable on SQLite and PostgreSQL).")
CARECAST_EVENTS_URL = EnvVar("CARECAST_EVENTS_URL", str, None,
                             "Live-update bus: a redis:// URL (pub/sub across processes and hosts), or unset to "
                             "follow new predictions in the database (works across processes, polls ~4x/s).")
CARECAST_RATE_LIMIT = EnvVar("CARECAST_RATE_LIMIT", _positive_int, 1200,
                             "API requests per minute per user (and per address for failed sign-ins); 429 beyond. "
                             "Shared across processes through CARECAST_QUEUE_URL's Redis when that is set.")
CARECAST_SECRET_KEY = EnvVar("CARECAST_SECRET_KEY", str, None,
                             "Key signing the web UI's session cookies (at least 32 characters). Required in "
                             "production; elsewhere one is generated and kept in $CARECAST_DATA_DIR/keys/session.key.",
                             secret=True)
CARECAST_SESSION_IDLE_MINUTES = EnvVar("CARECAST_SESSION_IDLE_MINUTES", _positive_float, 15.0,
                                       "Minutes without activity after which a web UI session is signed out "
                                       "(a warning shows before).")


def _origins(raw: str) -> tuple[str, ...]:
    """A comma-separated list of exact origins (scheme://host[:port]); "*" and paths are refused (strict CORS)."""
    found: list[str] = []
    for item in raw.split(","):
        origin = item.strip().rstrip("/").lower()
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("https", "http") or not sep or not rest or any(c in rest for c in "/?#*@ "):
            raise ValueError("expected origins such as https://ehr.example.org, separated by commas")
        found.append(origin)
    return tuple(dict.fromkeys(found))


CARECAST_CORS_ORIGINS: EnvVar[tuple[str, ...]] = EnvVar("CARECAST_CORS_ORIGINS", _origins, (),
                               "Browser origins (https://host[:port], comma-separated) allowed to call the API and "
                               "CDS Hooks from their pages (CORS). Default: none; the web UI is same-origin only.")


def _hours(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("expected a number of hours, 0 or more")
    return value


CARECAST_RETRAIN_INTERVAL_HOURS = EnvVar("CARECAST_RETRAIN_INTERVAL_HOURS", _hours, None,
                                         "Hours between in-process retraining runs (`carecast retrain` behind the "
                                         "promotion gates) of the embedded default; 0 turns them off. Default: 24, "
                                         "and 0 when CARECAST_ENV=test.")
CARECAST_DRIFT_INTERVAL_HOURS = EnvVar("CARECAST_DRIFT_INTERVAL_HOURS", _hours, None,
                                       "Hours between in-process drift checks of the champions (`carecast monitor "
                                       "drift`, beside the retraining schedule in `carecast live`); an alert is "
                                       "logged and counted in carecast_drift_alerts. 0 turns them off. Default: 6, "
                                       "and 0 when CARECAST_ENV=test.")

ALL_VARIABLES: tuple[EnvVar[Any], ...] = (
    CARECAST_ENV, CARECAST_DATA_DIR, CARECAST_DATABASE_URL, CARECAST_DATA_KEY,
    CARECAST_KEY_FILE, CARECAST_KMS_KEY,
    CARECAST_LOG_LEVEL, CARECAST_INGEST_CHUNK, CARECAST_MODEL_REGISTRY, CARECAST_QUEUE_URL,
    CARECAST_EVENTS_URL, CARECAST_RATE_LIMIT, CARECAST_SECRET_KEY, CARECAST_SESSION_IDLE_MINUTES, CARECAST_CORS_ORIGINS,
    CARECAST_RETRAIN_INTERVAL_HOURS, CARECAST_DRIFT_INTERVAL_HOURS,
)


@dataclass(frozen=True)
class Settings:
    """The whole configuration, read once. Tests build their own with `Settings.from_env({...})`."""

    env: str = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    data_key: str | None = field(default=None, repr=False)
    key_file: Path = Path("var/keys/keyring.json")
    kms_key: str | None = None
    log_level: str = "info"
    ingest_chunk: int = 5000
    model_registry: str = "var/models"
    queue_url: str | None = None
    events_url: str | None = None
    rate_limit: int = 1200
    retrain_interval_hours: float = 0.0
    drift_interval_hours: float = 0.0
    secret_key: str | None = field(default=None, repr=False)
    session_idle_minutes: float = 15.0
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir: Path = CARECAST_DATA_DIR.read(env)  # type: ignore[assignment]
        database_url = CARECAST_DATABASE_URL.read(env) or f"sqlite:///{data_dir / 'carecast.db'}"
        key_file = CARECAST_KEY_FILE.read(env) or data_dir / "keys" / "keyring.json"
        return cls(
            env=CARECAST_ENV.read(env),  # type: ignore[arg-type]
            data_dir=data_dir,
            database_url=database_url,
            data_key=CARECAST_DATA_KEY.read(env),
            key_file=key_file,
            kms_key=CARECAST_KMS_KEY.read(env),
            log_level=CARECAST_LOG_LEVEL.read(env),  # type: ignore[arg-type]
            ingest_chunk=CARECAST_INGEST_CHUNK.read(env),  # type: ignore[arg-type]
            model_registry=CARECAST_MODEL_REGISTRY.read(env) or str(data_dir / "models"),
            queue_url=CARECAST_QUEUE_URL.read(env),
            events_url=CARECAST_EVENTS_URL.read(env),
            rate_limit=CARECAST_RATE_LIMIT.read(env),  # type: ignore[arg-type]
            retrain_interval_hours=_interval(CARECAST_RETRAIN_INTERVAL_HOURS.read(env), env, RETRAIN_INTERVAL_DEFAULT),
            drift_interval_hours=_interval(CARECAST_DRIFT_INTERVAL_HOURS.read(env), env, DRIFT_INTERVAL_DEFAULT),
            secret_key=CARECAST_SECRET_KEY.read(env),
            session_idle_minutes=CARECAST_SESSION_IDLE_MINUTES.read(env),  # type: ignore[arg-type]
            cors_origins=CARECAST_CORS_ORIGINS.read(env),  # type: ignore[arg-type]
        )

    @property
    def is_production(self) -> bool:
        return self.env == "production"


RETRAIN_INTERVAL_DEFAULT = 24.0
DRIFT_INTERVAL_DEFAULT = 6.0


def _interval(explicit: float | None, environ: Mapping[str, str], default: float) -> float:
    """A schedule's interval in hours: the variable when set, else `default`, except under CARECAST_ENV=test (off)."""
    if explicit is not None:
        return explicit
    return 0.0 if CARECAST_ENV.read(environ) == "test" else default


def describe() -> list[tuple[str, str, str]]:
    """(name, default, doc) of every variable, for `carecast config` and the docs."""
    return [(v.name, "" if v.default is None else str(v.default), v.doc) for v in ALL_VARIABLES]
