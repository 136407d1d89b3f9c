"""Errors of the EHR pull, with their exit code on the class (see :mod:`trialbridge.errors`)."""

from __future__ import annotations

from ..errors import TrialbridgeError


class PullError(TrialbridgeError):
    """The server could not be read to the end (refused, failed, gone, too slow). Exit 1."""

    code = "pull-failed"
    exit_code = 1


class AuthError(PullError):
    """No usable access token: the token endpoint or the server refused the credentials."""

    code = "auth-failed"


class ExportTimeout(PullError):
    """A Bulk Data export did not finish within the time limit; it was cancelled on the server."""

    code = "export-timeout"


class ServerRefused(PullError):
    """The server answered a request with an HTTP error status (``status`` holds it)."""

    code = "server-refused"

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)
