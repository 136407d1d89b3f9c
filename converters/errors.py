"""Exceptions with their exit code and severity on the class (no isinstance ladders in the CLI).

Every message names the file and, where known, the record and field: the one-line error a user sees.
"""

from __future__ import annotations


class TrialbridgeError(Exception):
    """Base class. ``code`` is a stable machine-readable id; ``exit_code`` what the CLI returns."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, file: str | None = None, record: str | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.record = record
        self.field = field
        self.detail = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = [p for p in (self.file, self.record and f"record {self.record}",
                             self.field and f"field {self.field}") if p]
        prefix = ": ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail


class InputError(TrialbridgeError):
    """The input cannot be read at all (not JSON/XML, wrong root, too big, hostile). Exit 2."""

    code = "unreadable-input"
    exit_code = 2


class UsageError(TrialbridgeError):
    """The command line asks for something impossible. Exit 2."""

    code = "usage"
    exit_code = 2


class ConversionError(TrialbridgeError):
    """The input was read but cannot be converted (or --strict turned an issue into an error). Exit 1."""

    code = "conversion-error"
    exit_code = 1


class StrictModeError(ConversionError):
    """Raised by the report when the strictness policy is ``raise``."""

    code = "strict"
