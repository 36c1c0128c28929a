"""Diagnostics and the one exception type the package raises for bad policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a policy file: 1-based line and column."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a policy: a fact (message), where it is, and what to do (hint)."""

    code: str
    message: str
    location: Location | None = None
    hint: str | None = None
    severity: Severity = "error"
    path: str | None = field(default=None)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def render(self) -> str:
        """One line, compiler style: ``file:line:col: CODE severity: message (path)``."""
        where = f"{self.location}: " if self.location is not None else ""
        suffix = f" ({self.path})" if self.path else ""
        return f"{where}{self.code} {self.severity}: {self.message}{suffix}"


class PolicyError(Exception):
    """A policy could not be loaded, validated or applied.

    ``diagnostics`` holds every finding; ``str(error)`` renders them with their hints.
    """

    def __init__(self, message: str | None = None, diagnostics: list[Diagnostic] | None = None) -> None:
        self.diagnostics: list[Diagnostic] = list(diagnostics or [])
        if message is None:
            message = "\n".join(_render_with_hint(d) for d in self.diagnostics) or "invalid policy"
        super().__init__(message)


def _render_with_hint(diagnostic: Diagnostic) -> str:
    text = diagnostic.render()
    if diagnostic.hint:
        text += f"\n  help: {diagnostic.hint}"
    return text


def trim(value: object, limit: int = 60) -> str:
    """Repeat a user's value back to them, cut to about ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
