"""The error hierarchy. Each error knows its HTTP status and CLI exit code.

Messages must never carry patient data: they name records by position (file, line,
entry) and fields by path, never by value.
"""

from __future__ import annotations


class ExitCode:
    """Process exit codes of the `carecast` command line, one meaning each."""

    OK = 0
    ERROR = 1
    USAGE = 2
    PARTIAL = 3  # some records were quarantined; the good ones were stored
    NOTHING_STORED = 4  # the input failed as a whole; nothing was stored
    CONFIG = 5  # a setting or secret is missing or invalid


class CareCastError(Exception):
    """Base class. `public_message` is safe to show to a user or write to a log."""

    http_status = 500
    exit_code = ExitCode.ERROR

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


class ConfigError(CareCastError):
    """A setting is missing or has a bad value; the message names the variable."""

    http_status = 500
    exit_code = ExitCode.CONFIG


class KeyMissingError(ConfigError):
    """No data-encryption key is available where one is required."""


class DecryptionError(CareCastError):
    """A ciphertext failed authentication or names an unknown key."""

    http_status = 500


class InputError(CareCastError):
    """Input that cannot be read at all (not a single record could be decoded)."""

    http_status = 400
    exit_code = ExitCode.NOTHING_STORED


class NotFoundError(CareCastError):
    http_status = 404


class StoreUnavailableError(CareCastError):
    http_status = 503
