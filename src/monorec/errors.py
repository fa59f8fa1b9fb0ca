"""One exception hierarchy for monorec.

Every error a user can cause derives from :class:`MonorecError`, so callers can catch one type.
Messages say what was wrong, where, and what is allowed.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CanvasNotServed",
    "ChangeError",
    "ConfigError",
    "DataError",
    "DeployError",
    "GateError",
    "MonorecError",
    "RegistryError",
    "RequestError",
    "ServingUnavailable",
    "StreamUnavailable",
]


class MonorecError(Exception):
    """Base class of every error monorec raises on purpose."""


class ConfigError(MonorecError):
    """A project config is invalid. ``problems`` lists every problem found, not only the first."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the config:\n{lines}")


class DataError(MonorecError):
    """Input data (logs, catalogue) is malformed.

    Args:
        file: the file (or table name) that holds the bad data.
        column: the offending column, or None when the problem is the whole file.
        rows: how many rows are affected (0 when not row-related).
        reason: what is wrong and what is expected.
    """

    def __init__(self, file: str, reason: str, *, column: str | None = None, rows: int = 0) -> None:
        self.file = file
        self.column = column
        self.rows = rows
        self.reason = reason
        where = f"{file}" + (f", column {column!r}" if column else "")
        count = f" ({rows} row{'s' if rows != 1 else ''} affected)" if rows else ""
        super().__init__(f"{where}: {reason}{count}")


class RequestError(MonorecError):
    """A request does not match the unified context schema (serving maps this to a 4xx)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field {field!r}: {reason}")


class CanvasNotServed(RequestError):
    """The canvas exists but this serving environment does not serve it (HTTP 404)."""

    def __init__(self, canvas: str, served: tuple[str, ...]) -> None:
        super().__init__("canvas", f"{canvas!r} is not served in this environment (served: {', '.join(served)})")


class ServingUnavailable(MonorecError):
    """No answer can be given: no version is serving, or the model failed and the request's fallback is
    ``none`` (HTTP 503)."""


class ArtifactError(MonorecError):
    """A saved artifact (model, featurizer, manifest) is missing, corrupt or incompatible."""


class RegistryError(MonorecError):
    """A registry operation is not allowed (e.g. overwriting an immutable version)."""


class GateError(MonorecError):
    """The release gate refused a candidate version. ``regressions`` names each regressing metric."""

    def __init__(self, regressions: list[str]) -> None:
        self.regressions = list(regressions)
        super().__init__("release gate refused the candidate:\n" + "\n".join(f"  - {r}" for r in regressions))


class ChangeError(MonorecError):
    """A catalogue change is malformed (unknown entity type, missing or mistyped field). Loaders put such
    a change into the dead-letter table with this reason and go on."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"change field {field!r}: {reason}")


class DeployError(MonorecError):
    """A deployment step is not allowed in the version's current state, or a version failed validation."""


class StreamUnavailable(MonorecError):
    """The change log's broker cannot be reached right now; loaders retry with backoff."""
