"""Errors meant for people: what was wrong, where, and what to do."""

from __future__ import annotations


class HerdError(Exception):
    """Base class of every error herd raises on purpose (the CLI prints these without a traceback)."""


class DataError(HerdError):
    """A dataset record is unusable. Names the file, the record (or line) and the field."""

    def __init__(self, path: str, message: str, *, record: int | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.path, self.record, self.line, self.field = str(path), record, line, field
        where = self.path
        if line is not None:
            where += f":{line}"
        if record is not None:
            where += f" record {record}"
        if field is not None:
            where += f" field '{field}'"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class ConfigError(HerdError):
    """A recipe or stage config is invalid. Names the file and the field."""


class BaseError(HerdError):
    """A base checkpoint cannot be resolved or is not a Llama-architecture model."""
