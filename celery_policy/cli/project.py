"""``[tool.celery-policy]`` in ``pyproject.toml``: the project's defaults for the commands that read policy files.

The table of the nearest ``pyproject.toml`` that has one, found by walking up
from the working directory (as ruff does); see :class:`ProjectConfig`.
Command-line arguments win over it. ``files`` and ``env`` apply to every
command that reads policy files (``check``, ``explain``, ``diff``, ``status
--expect``, the ``dlq`` commands' store settings); the rest is ``check``'s.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from celery_policy.lint.registry import unknown_selectors


class ProjectConfigError(Exception):
    """The ``pyproject.toml`` is not TOML, or its ``[tool.celery-policy]`` table has bad values (exit 2)."""


_CONFIG_KEYS = ("files", "env", "all-envs", "app", "select", "ignore", "strict", "severity", "consumer-timeout")
SEVERITIES = ("error", "warning", "off")


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """``[tool.celery-policy]`` of a ``pyproject.toml``::

    [tool.celery-policy]
    files = ["policies/celery-policy.yaml"]   # relative to the pyproject.toml
    env = "production"                        # or: all-envs = true
    app = "proj.celery"
    select = ["CP1", "CP2"]
    ignore = ["CP206"]
    strict = true
    severity = {CP205 = "error", CP202 = "off"}   # per rule (code, prefix or name): error | warning | off
    consumer-timeout = "1h"                   # the RabbitMQ broker's consumer_timeout (CP220; default 30m)
    """

    path: str
    files: tuple[str, ...] = ()
    env: str | None = None
    all_envs: bool = False
    app: str | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    strict: bool = False
    severity: tuple[tuple[str, str], ...] = ()  # (selector, "error" | "warning" | "off"), as written
    consumer_timeout_s: float | None = None

    def apply(
        self,
        files: Sequence[str],
        *,
        env: str | None,
        all_envs: bool,
        app: str | None,
        strict: bool,
        select: Sequence[str],
        ignore: Sequence[str],
    ) -> tuple[Sequence[str], str | None, bool, str | None, bool, Sequence[str], Sequence[str]]:
        """Merge with command-line values (see :func:`run_check`)."""
        if env is None and not all_envs:
            env, all_envs = self.env, self.all_envs
        return (
            files or self.files,
            env,
            all_envs,
            app or self.app,
            strict or self.strict,
            select or self.select,
            (*self.ignore, *ignore),
        )


def find_project_config(start: str | os.PathLike[str] | None = None) -> ProjectConfig | None:
    """The ``[tool.celery-policy]`` table of the nearest ``pyproject.toml`` at or above ``start`` that has one.

    Raises :class:`ProjectConfigError` for a file that is not TOML or a table with bad values.
    """
    directory = Path(start or os.getcwd()).resolve()
    for folder in (directory, *directory.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ProjectConfigError(f"cannot read {candidate}: {exc}") from exc
        table = data.get("tool", {}).get("celery-policy")
        if table is not None:
            return _project_config(candidate, table)
    return None


def _project_config(path: Path, table: Any) -> ProjectConfig:
    where = f"{path} [tool.celery-policy]"
    if not isinstance(table, dict):
        raise ProjectConfigError(f"{where} is not a table")
    for key in table:
        if key not in _CONFIG_KEYS:
            close = difflib.get_close_matches(key.replace("_", "-"), _CONFIG_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_CONFIG_KEYS)}"
            raise ProjectConfigError(f"{where}: unknown key '{key}'{hint}")

    def severities() -> tuple[tuple[str, str], ...]:
        value = table.get("severity", {})
        if not isinstance(value, dict):
            raise ProjectConfigError(f"{where}: 'severity' must be a table such as {{CP205 = \"error\"}}")
        found: list[tuple[str, str]] = []
        for selector, level in value.items():
            if level not in SEVERITIES:
                choices = ", ".join(f'"{s}"' for s in SEVERITIES)
                raise ProjectConfigError(f"{where}: severity of '{selector}' must be one of {choices}, got {level!r}")
            found.append((selector.upper() if selector[:2].upper() == "CP" else selector, level))
        return tuple(found)

    def duration(key: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        from celery_policy.durations import parse_duration

        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise ProjectConfigError(f"{where}: '{key}' must be a duration such as \"30m\": {exc}") from exc
        if seconds <= 0:
            raise ProjectConfigError(f"{where}: '{key}' must be greater than 0")
        return seconds

    def strings(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProjectConfigError(f"{where}: '{key}' must be a list of strings")
        return tuple(value)

    def text(key: str) -> str | None:
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ProjectConfigError(f"{where}: '{key}' must be a string")
        return value

    def flag(key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise ProjectConfigError(f"{where}: '{key}' must be true or false")
        return value

    config = ProjectConfig(
        str(path),
        env=text("env"),
        all_envs=flag("all-envs"),
        app=text("app"),
        select=tuple(s.upper() if s[:2].upper() == "CP" else s for s in strings("select")),
        ignore=tuple(s.upper() if s[:2].upper() == "CP" else s for s in strings("ignore")),
        strict=flag("strict"),
        severity=severities(),
        consumer_timeout_s=duration("consumer-timeout"),
    )
    if config.env is not None and config.all_envs:
        raise ProjectConfigError(f"{where}: 'env' and 'all-envs' exclude each other")
    import celery_policy.lint.rules  # noqa: F401  (registers the rules the selectors are checked against)

    bad = unknown_selectors([*config.select, *config.ignore, *(s for s, _ in config.severity)])
    if bad:
        raise ProjectConfigError(f"{where}: unknown rule or prefix {', '.join(repr(b) for b in bad)}")
    base = path.parent
    files = tuple(_display_path(base / f) for f in strings("files"))
    return replace(config, files=files)


def _display_path(path: Path) -> str:
    """Relative to the working directory when below it (as findings show it), else absolute."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def project_policy(files: Sequence[str], env: str | None, config: ProjectConfig | None) -> tuple[list[str], str | None]:
    """The policy files and environment a command reads: explicit values, else ``[tool.celery-policy]``,
    else (files) ``$CELERY_POLICY_FILE`` or ``policies/celery-policy.yaml``."""
    from celery_policy.loader import default_policy_paths

    chosen = list(files) or (list(config.files) if config is not None else []) or default_policy_paths()
    if env is None and config is not None:
        env = config.env
    return chosen, env
