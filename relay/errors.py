"""Errors a person can act on. Each carries the exit code the CLI uses and, for the HTTP API, a
status; the message is one line naming the thing at fault."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or state, reported as one line (never a traceback)."""

    exit_code = 2
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SettingsError(UserError):
    """A RELAY_* setting (or its flag) is missing or invalid."""


class UsageError(UserError):
    """A command-line argument is invalid."""


class Invalid(UserError):
    """A request the admin service refuses; `field` names the input at fault."""

    status = 422


class Conflict(UserError):
    """A change that does not fit the integration's current state (say, an endpoint of
    another region than the stored one)."""

    status = 409


class NotFound(UserError):
    exit_code = 1
    status = 404
