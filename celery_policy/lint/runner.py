"""``celery-policy check`` and ``celery-policy rules``: read, validate, lint, report.

The pipeline for ``check``:

1. ``--app``: import and snapshot the Celery app (a failure is a usage error, exit 2).
2. Read every file (a missing or unreadable one is exit 2); syntax problems stop here.
3. Merge the files in order; structural checks of the whole file (duplicate
   keys, each environment overlay on its own, every ``extends`` chain).
4. For the base file, ``--env NAME``, or the base and every environment
   (``--all-envs``): apply the overlays, validate, run the lint rules.
5. Keep each finding once (the first place it shows; with ``--all-envs`` a
   finding that never shows in the base file names its environments), filter
   by ``--select/--ignore``, set aside the findings that a
   ``# celery-policy: ignore[CODE]`` comment suppresses, render, and return
   the exit code.

Project settings come from the ``[tool.celery-policy]`` table of the nearest
``pyproject.toml`` that has one, found by walking up from the working
directory (as ruff does); see :class:`ProjectConfig`. Command-line arguments
win over it.

Nothing raises out of :func:`run_check`: unexpected input becomes findings,
and a rule that crashes becomes a finding of its own code.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import click
from pydantic import ValidationError

import celery_policy.lint.rules  # noqa: F401  (registers the rules)
from celery_policy.errors import Diagnostic, Location, PolicyError
from celery_policy.lint.appsnapshot import AppLoadError, AppSnapshot, load_app
from celery_policy.lint.context import LintContext
from celery_policy.lint.registry import RULES, Rule, find_rule, is_selected, matches_selector, unknown_selectors
from celery_policy.lint.report import CheckReport, Finding, render, render_rule_list, use_color
from celery_policy.loader import (
    RawPolicy,
    UnreadableFileError,
    apply_environment,
    default_policy_paths,
    environment_chain,
    merge_raw,
    read_policy_file,
    translate_validation_error,
    validate_overlays,
)
from celery_policy.model import PolicyDocument
from celery_policy.references import ensure_import_root

OK = 0
LINT_FAILED = 1
USAGE = 2

_Tagged = tuple[Diagnostic, str | None]  # a finding and the environment it showed in (None: base)


class _UsageProblem(Exception):
    """Exit 2: bad arguments, a missing file, an app that does not import."""


def run_check(
    files: Sequence[str],
    *,
    env: str | None = None,
    all_envs: bool = False,
    app: str | None = None,
    fmt: str = "text",
    strict: bool = False,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    project: ProjectConfig | bool | None = True,
) -> int:
    """Check policy ``files`` and print the report; return the exit code (0 clean, 1 findings, 2 usage).

    ``project=True`` reads ``[tool.celery-policy]`` from the nearest ``pyproject.toml``
    (see :func:`find_project_config`); pass a :class:`ProjectConfig`, or False/None for none.
    Explicit arguments win: ``files``, ``env``/``all_envs``, ``app`` and ``select`` replace
    the configured values, ``ignore`` adds to them, and ``strict`` turns strictness on.
    """
    try:
        config = find_project_config() if project is True else project or None
        if config is not None:
            files, env, all_envs, app, strict, select, ignore = config.apply(
                files, env=env, all_envs=all_envs, app=app, strict=strict, select=select, ignore=ignore
            )
        if not files:
            files = default_policy_paths()
        report = check(files, env=env, all_envs=all_envs, app=app, strict=strict, select=select, ignore=ignore)
    except _UsageProblem as exc:
        click.echo(f"celery-policy check: error: {exc}", err=True)
        return USAGE
    except Exception as exc:  # the last guard: a message, never a traceback
        click.echo(f"celery-policy check: internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        return USAGE
    for warning in report.notes:
        click.echo(f"celery-policy check: warning: {warning}", err=True)
    color = fmt == "text" and use_color()
    click.echo(render(report, fmt, color=color), nl=False, color=color)
    return report.exit_code


def check(
    files: Sequence[str],
    *,
    env: str | None = None,
    all_envs: bool = False,
    app: str | None = None,
    strict: bool = False,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> CheckReport:
    """Run the whole check and return the report. Raises :class:`_UsageProblem` for exit-2 situations."""
    if not files:
        raise _UsageProblem("no policy file given")
    if env is not None and all_envs:
        raise _UsageProblem("--env and --all-envs exclude each other")
    bad = unknown_selectors([*select, *ignore])
    if bad:
        raise _UsageProblem(f"unknown rule or prefix {', '.join(repr(b) for b in bad)} (see: celery-policy rules)")
    snapshot = _load_app(app)
    ensure_import_root(snapshot.root if snapshot is not None else None)

    envs: list[str | None] = [env] if env is not None else [None]
    tagged: list[_Tagged] = []
    raw = _read(files, tagged)
    if raw is not None:
        tagged.extend((d, None) for d in raw.diagnostics)
        tagged.extend((d, None) for d in _structure(raw))
        clean = RawPolicy(raw.files, raw.data, raw.source)  # duplicate keys are reported above, not again per env
        if all_envs:
            envs += _environment_names(raw)
        for name in envs:
            tagged.extend((d, name) for d in _check_env(clean, name, snapshot, select, ignore))
    mode = "env" if env is not None else "all" if all_envs else "base"
    findings = _dedupe(tagged, mode)
    findings = [f for f in findings if is_selected(f.diagnostic.code, select, ignore)]
    findings.sort(key=lambda f: _order(f, files))
    comments = read_suppressions(files)
    kept = [f for f in findings if not comments.suppresses(f.diagnostic)]
    suppressed = [f for f in findings if comments.suppresses(f.diagnostic)]
    errors = any(f.diagnostic.is_error for f in kept)
    warnings = any(not f.diagnostic.is_error for f in kept)
    exit_code = LINT_FAILED if errors or (strict and warnings) else OK
    return CheckReport(
        tuple(files), tuple(kept), tuple(envs), exit_code, mode, suppressed=tuple(suppressed), notes=comments.problems
    )


# --- suppression comments ------------------------------------------------------------------------

_SUPPRESS = re.compile(r"#\s*celery-policy:\s*ignore\[([^\]]*)\]")


@dataclass(frozen=True, slots=True)
class Suppressions:
    """``# celery-policy: ignore[CP201, CP205]`` comments: (file, line) -> the selectors they name.

    A comment at the end of a line covers findings on that line; a comment on a
    line of its own covers findings on the next line. Selectors are what
    ``--ignore`` takes: codes, prefixes (``CP2``) or rule names. A comment that
    names no known rule is reported in ``problems`` and suppresses nothing.
    """

    by_line: Mapping[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def suppresses(self, diagnostic: Diagnostic) -> bool:
        location = diagnostic.location
        if location is None:
            return False
        selectors = self.by_line.get((location.file, location.line), ())
        return any(matches_selector(diagnostic.code, s) for s in selectors)


def read_suppressions(files: Sequence[str]) -> Suppressions:
    """Scan ``files`` for suppression comments (unreadable files have none)."""
    by_line: dict[tuple[str, int], tuple[str, ...]] = {}
    problems: list[str] = []
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            found = _SUPPRESS.search(line)
            if found is None:
                continue
            selectors = tuple(s.strip() for s in found.group(1).split(",") if s.strip())
            unknown = unknown_selectors(selectors)
            if unknown or not selectors:
                names = ", ".join(repr(u) for u in unknown) if unknown else "no rule"
                problems.append(f"{path}:{number}: suppression comment names {names}; it suppresses nothing")
                continue
            target = number + 1 if line.lstrip().startswith("#") else number
            by_line[(path, target)] = by_line.get((path, target), ()) + selectors
    return Suppressions(by_line, tuple(problems))


# --- [tool.celery-policy] in pyproject.toml ------------------------------------------------------

_CONFIG_KEYS = ("files", "env", "all-envs", "app", "select", "ignore", "strict")


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
    """

    path: str
    files: tuple[str, ...] = ()
    env: str | None = None
    all_envs: bool = False
    app: str | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    strict: bool = False

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

    Raises :class:`_UsageProblem` (exit 2) for a file that is not TOML or a table with bad values.
    """
    directory = Path(start or os.getcwd()).resolve()
    for folder in (directory, *directory.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise _UsageProblem(f"cannot read {candidate}: {exc}") from exc
        table = data.get("tool", {}).get("celery-policy")
        if table is not None:
            return _project_config(candidate, table)
    return None


def _project_config(path: Path, table: Any) -> ProjectConfig:
    where = f"{path} [tool.celery-policy]"
    if not isinstance(table, dict):
        raise _UsageProblem(f"{where} is not a table")
    for key in table:
        if key not in _CONFIG_KEYS:
            close = difflib.get_close_matches(key.replace("_", "-"), _CONFIG_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_CONFIG_KEYS)}"
            raise _UsageProblem(f"{where}: unknown key '{key}'{hint}")

    def strings(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _UsageProblem(f"{where}: '{key}' must be a list of strings")
        return tuple(value)

    def text(key: str) -> str | None:
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise _UsageProblem(f"{where}: '{key}' must be a string")
        return value

    def flag(key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise _UsageProblem(f"{where}: '{key}' must be true or false")
        return value

    config = ProjectConfig(
        str(path),
        env=text("env"),
        all_envs=flag("all-envs"),
        app=text("app"),
        select=tuple(s.upper() if s[:2].upper() == "CP" else s for s in strings("select")),
        ignore=tuple(s.upper() if s[:2].upper() == "CP" else s for s in strings("ignore")),
        strict=flag("strict"),
    )
    if config.env is not None and config.all_envs:
        raise _UsageProblem(f"{where}: 'env' and 'all-envs' exclude each other")
    bad = unknown_selectors([*config.select, *config.ignore])
    if bad:
        raise _UsageProblem(f"{where}: unknown rule or prefix {', '.join(repr(b) for b in bad)}")
    base = path.parent
    files = tuple(_display_path(base / f) for f in strings("files"))
    return replace(config, files=files)


def _display_path(path: Path) -> str:
    """Relative to the working directory when below it (as findings show it), else absolute."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def _load_app(spec: str | None) -> AppSnapshot | None:
    if spec is None:
        return None
    try:
        return load_app(spec)
    except AppLoadError as exc:
        raise _UsageProblem(str(exc)) from exc


def _read(files: Sequence[str], tagged: list[_Tagged]) -> RawPolicy | None:
    """Read and merge the files; None (with findings added) when one cannot be parsed."""
    layers: list[RawPolicy] = []
    for path in files:
        try:
            layers.append(read_policy_file(path))
        except UnreadableFileError as exc:
            raise _UsageProblem(str(exc)) from exc
        except PolicyError as exc:
            tagged.extend((d, None) for d in exc.diagnostics)
        except (Exception, RecursionError) as exc:  # the reader promises findings; never let a crash escape
            message = f"cannot parse the file: {type(exc).__name__}: {exc}"
            tagged.append((Diagnostic("CP100", message, Location(path)), None))
    if len(layers) != len(files):
        return None
    try:
        return merge_raw(layers)
    except Exception as exc:
        tagged.append((Diagnostic("CP101", f"cannot merge the files: {type(exc).__name__}: {exc}", None), None))
        return None


def _environment_names(raw: RawPolicy) -> list[str | None]:
    environments = raw.data.get("environments")
    return [str(name) for name in environments] if isinstance(environments, dict) else []


def _structure(raw: RawPolicy) -> list[Diagnostic]:
    """Whole-file findings: each overlay validated on its own and every ``extends`` chain followed."""
    found: list[Diagnostic] = []
    environments = raw.data.get("environments")
    if environments is not None and not isinstance(environments, dict):
        try:
            PolicyDocument.model_validate({"version": 1, "environments": environments})
        except ValidationError as exc:
            found.extend(translate_validation_error(exc, raw))
        return found
    try:
        found.extend(validate_overlays(raw))
    except Exception as exc:
        found.append(_internal("CP101", "validating the environments", exc, raw))
    for name in _environment_names(raw):
        assert name is not None
        try:
            environment_chain(raw, name)
        except PolicyError as exc:
            found.extend(exc.diagnostics)
        except Exception as exc:
            found.append(_internal("CP111", f"following environment '{name}'", exc, raw))
    return found


def _check_env(
    raw: RawPolicy, env: str | None, app: AppSnapshot | None, select: Sequence[str], ignore: Sequence[str]
) -> list[Diagnostic]:
    """Validate the document as seen in ``env`` and run every selected lint rule over it."""
    try:
        effective = apply_environment(raw, env)
    except PolicyError as exc:
        return list(exc.diagnostics)
    except Exception as exc:
        return [_internal("CP101", "applying the environment overlays", exc, raw)]
    try:
        document = PolicyDocument.model_validate(effective.data)
    except ValidationError as exc:
        return translate_validation_error(exc, effective)
    ctx = LintContext(document, effective.source, raw, env, app)
    found: list[Diagnostic] = []
    for code, entry in RULES.items():
        if entry.emitted_by == "loader" or (entry.needs_app and app is None):
            continue
        if not is_selected(code, select, ignore):
            continue
        try:
            found.extend(entry.run(ctx))
        except Exception as exc:
            found.append(_internal(code, f"rule {code} {entry.name}", exc, raw))
    return found


def _internal(code: str, doing: str, exc: BaseException, raw: RawPolicy) -> Diagnostic:
    message = f"internal error while {doing}: {type(exc).__name__}: {exc}"
    return Diagnostic(code, message, Location(raw.files[0]), "please report this with the policy file")


def _dedupe(tagged: Iterable[_Tagged], mode: str) -> list[Finding]:
    """Each finding once (see :func:`_key`): the first seen, with the environments it showed in."""
    first: dict[Any, Diagnostic] = {}
    seen_in: dict[Any, list[str | None]] = {}
    for diagnostic, env in tagged:
        key = _key(diagnostic)
        if key not in first:
            first[key] = diagnostic
            seen_in[key] = []
        if env not in seen_in[key]:
            seen_in[key].append(env)
    findings: list[Finding] = []
    for key, diagnostic in first.items():
        envs = seen_in[key]
        limited = () if mode != "all" or None in envs else tuple(e for e in envs if e is not None)
        entry = RULES.get(diagnostic.code)
        findings.append(Finding(diagnostic, entry.name if entry else "", limited))
    return findings


def _key(diagnostic: Diagnostic) -> tuple[Any, ...]:
    """Loader findings are keyed by place only (an overlay error reads differently once merged into the
    document); lint findings by place and message, so an environment that changes a value shows its own."""
    entry = RULES.get(diagnostic.code)
    if diagnostic.location is None:
        return (diagnostic.code, diagnostic.message)
    if entry is None or entry.emitted_by == "loader":
        return (diagnostic.code, diagnostic.location)
    return (diagnostic.code, diagnostic.location, diagnostic.message)


def _order(finding: Finding, files: Sequence[str]) -> tuple[Any, ...]:
    location = finding.diagnostic.location
    if location is None:
        return (len(files) + 1, 0, 0, finding.diagnostic.code)
    index = list(files).index(location.file) if location.file in files else len(files)
    return (index, location.line, location.column, finding.diagnostic.code)


# --- celery-policy rules --------------------------------------------------------------------------


def run_rules(rule: str | None = None) -> int:
    """List every rule, or print one rule's documentation. Returns the exit code."""
    if rule is None:
        rows = [
            (r.code, r.name, r.severity, r.summary + (" [--app]" if r.needs_app else ""))
            for r in sorted(RULES.values(), key=lambda r: r.code)
        ]
        click.echo(render_rule_list(rows), nl=False)
        return OK
    found = find_rule(rule)
    if found is None:
        choices = [c for r in RULES.values() for c in (r.code, r.name)]
        close = difflib.get_close_matches(rule.upper() if rule[:2].upper() == "CP" else rule, choices, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; run 'celery-policy rules' for the list"
        click.echo(f"celery-policy rules: error: unknown rule '{rule}'{hint}", err=True)
        return USAGE
    click.echo(describe_rule(found), nl=False)
    return OK


def describe_rule(entry: Rule) -> str:
    """The text ``celery-policy rules CODE`` prints."""
    notes = []
    if entry.needs_app:
        notes.append("needs --app")
    if entry.emitted_by == "loader":
        notes.append("reported while the file is read and validated")
    if entry.aliases:
        notes.append(f"formerly {', '.join(entry.aliases)}")
    head = f"{entry.code} {entry.name} ({entry.severity}{'; ' + '; '.join(notes) if notes else ''})"
    return f"{head}\n\n{entry.doc}\n"
