"""Rendering ``check`` findings: compiler-style text, JSON, GitHub annotations and SARIF.

Text (colour only on a TTY, never with ``NO_COLOR`` set)::

    policies/celery-policy.yaml:14:7: CP103 error: soft timeout 6m is not below hard timeout 5m (tasks."r.*".timeout)
      help: make the soft limit shorter than the hard one ...
    1 error, 0 warnings in 1 file

A finding that only shows in some environments (``--all-envs``) names them
after its path: ``(tasks.orders.charge.timeout, env production)``.

JSON (``--format json``), version 1::

    {
      "version": 1,
      "files": ["policies/celery-policy.yaml"],
      "envs": [null, "production"],           # what was checked; null = the base file
      "findings": [
        {"code": "CP103", "name": "soft-not-below-hard", "severity": "error",
         "message": "...", "hint": "..." | null,
         "file": "..." | null, "line": 14 | null, "column": 7 | null,
         "path": "tasks.\\"reports.*\\".timeout" | null,
         "env": null | "production" | "production, staging"}
      ],
      "summary": {"errors": 1, "warnings": 0, "files": 1, "exit_code": 1}
    }

When ``# celery-policy: ignore[...]`` comments silenced findings, a top-level
``"suppressed"`` list (findings in the same shape) and ``summary.suppressed``
(their count) are added; without any, the two keys are absent.

``env`` is null for a finding of the base file; with ``--env NAME`` it is
NAME; with ``--all-envs`` it names the environments a finding is limited to.
Fields are only ever added within a version.

GitHub (``--format github``): one workflow command per finding,
``::error file=F,line=L,col=C,title=CP103::message (path)``; warnings use
``::warning``.

SARIF (``--format sarif``): one SARIF 2.1.0 log with one run; the rules that
fired are in ``tool.driver.rules`` with their documentation, and suppressed
findings are results with an ``inSource`` suppression, as code-scanning
dashboards expect. ``docs/output-formats.md`` describes every format.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from celery_policy.errors import Diagnostic

if TYPE_CHECKING:
    from celery_policy.lint.registry import Rule

JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class Finding:
    """A diagnostic with the rule's name and the environments it is limited to (empty: everywhere checked)."""

    diagnostic: Diagnostic
    name: str
    envs: tuple[str, ...] = ()

    @property
    def env_label(self) -> str | None:
        return ", ".join(self.envs) if self.envs else None


@dataclass(frozen=True, slots=True)
class CheckReport:
    files: tuple[str, ...]
    findings: tuple[Finding, ...]
    envs: tuple[str | None, ...]  # what was checked: None = the base file
    exit_code: int
    env_mode: str = "base"  # "base", "env" (--env NAME) or "all" (--all-envs)
    suppressed: tuple[Finding, ...] = ()  # findings silenced by `# celery-policy: ignore[...]` comments
    notes: tuple[str, ...] = ()  # warnings about the run itself (e.g. a suppression naming no rule)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.diagnostic.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.diagnostic.severity == "warning")


def use_color(stream: IO[str] | None = None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set to anything."""
    if os.environ.get("NO_COLOR"):
        return False
    out = stream if stream is not None else sys.stdout
    try:
        return out.isatty()
    except ValueError:  # a closed stream
        return False


def render(report: CheckReport, fmt: str, *, color: bool = False) -> str:
    """The whole output of ``check`` in one of ``text``, ``json``, ``github``, ``sarif``."""
    if fmt == "sarif":
        return render_sarif(report)
    if fmt == "json":
        return render_json(report)
    if fmt == "github":
        return render_github(report)
    return render_text(report, color=color)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summary_line(report: CheckReport) -> str:
    scope = _plural(len(report.files), "file")
    if report.env_mode == "env" and report.envs:
        scope += f" (env {report.envs[0]})"
    elif report.env_mode == "all":
        names = [e for e in report.envs if e is not None]
        if names:
            scope += f" (base and {_plural(len(names), 'environment')}: {', '.join(names)})"
        else:
            scope += " (base only: the files define no environments)"
    quiet = f" ({len(report.suppressed)} suppressed)" if report.suppressed else ""
    if not report.findings:
        return f"no problems in {scope}{quiet}"
    return f"{_plural(report.errors, 'error')}, {_plural(report.warnings, 'warning')} in {scope}{quiet}"


def _suffix(finding: Finding, report: CheckReport) -> str:
    parts = [finding.diagnostic.path] if finding.diagnostic.path else []
    if finding.envs and report.env_mode == "all":
        parts.append(f"env {finding.env_label}")
    return f" ({', '.join(parts)})" if parts else ""


def render_text(report: CheckReport, *, color: bool = False) -> str:
    def style(text: str, **kwargs: Any) -> str:
        return click.style(text, **kwargs) if color else text

    lines: list[str] = []
    for finding in report.findings:
        d = finding.diagnostic
        where = style(f"{d.location}: ", bold=True) if d.location is not None else ""
        severity = style(d.severity, fg="red" if d.is_error else "yellow", bold=True)
        lines.append(f"{where}{style(d.code, bold=True)} {severity}: {d.message}{_suffix(finding, report)}")
        if d.hint:
            lines.append(f"  {style('help', fg='cyan')}: {d.hint}")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"


def finding_json(finding: Finding, report: CheckReport) -> dict[str, Any]:
    d = finding.diagnostic
    env = finding.env_label
    if report.env_mode == "env" and report.envs:
        env = report.envs[0]
    return {
        "code": d.code,
        "name": finding.name,
        "severity": d.severity,
        "message": d.message,
        "hint": d.hint,
        "file": d.location.file if d.location else None,
        "line": d.location.line if d.location else None,
        "column": d.location.column if d.location else None,
        "path": d.path,
        "env": env,
    }


def render_json(report: CheckReport) -> str:
    data: dict[str, Any] = {
        "version": JSON_VERSION,
        "files": list(report.files),
        "envs": list(report.envs),
        "findings": [finding_json(f, report) for f in report.findings],
        "summary": {
            "errors": report.errors,
            "warnings": report.warnings,
            "files": len(report.files),
            "exit_code": report.exit_code,
        },
    }
    if report.suppressed:  # added in 0.2 (still version 1): present only when a comment silenced a finding
        data["suppressed"] = [finding_json(f, report) for f in report.suppressed]
        data["summary"]["suppressed"] = len(report.suppressed)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: CheckReport) -> str:
    lines: list[str] = []
    for finding in report.findings:
        d = finding.diagnostic
        props: list[str] = []
        if d.location is not None:
            props += [
                f"file={_escape_property(d.location.file)}",
                f"line={d.location.line}",
                f"col={d.location.column}",
            ]
        props.append(f"title={_escape_property(d.code)}")
        message = f"{d.message}{_suffix(finding, report)}"
        if d.hint:
            message += f"\nhelp: {d.hint}"
        lines.append(f"::{d.severity} {','.join(props)}::{_escape_data(message)}")
    return "".join(line + "\n" for line in lines)


SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def render_sarif(report: CheckReport) -> str:
    """A SARIF 2.1.0 log for code-scanning dashboards (GitHub code scanning, GitLab, Azure DevOps)."""
    from celery_policy._version import __version__
    from celery_policy.lint.registry import RULES

    everything = [(f, False) for f in report.findings] + [(f, True) for f in report.suppressed]
    codes = sorted({f.diagnostic.code for f, _ in everything})
    index = {code: i for i, code in enumerate(codes)}
    rules: list[dict[str, Any]] = []
    for code in codes:
        entry = RULES.get(code)
        described: dict[str, Any] = {"id": code}
        if entry is not None:
            described |= {
                "name": entry.name,
                "shortDescription": {"text": entry.summary},
                "fullDescription": {"text": entry.section("What it does:") or entry.summary},
                "help": {"text": entry.doc, "markdown": rule_markdown(entry)},
                "defaultConfiguration": {"level": entry.severity},
            }
        rules.append(described)
    results = [_sarif_result(f, report, index[f.diagnostic.code], silenced) for f, silenced in everything]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "celery-policy",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().as_uri() + "/"}},
                "results": results,
                "invocations": [{"executionSuccessful": True, "exitCode": report.exit_code}],
            }
        ],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


def _sarif_result(finding: Finding, report: CheckReport, rule_index: int, silenced: bool) -> dict[str, Any]:
    d = finding.diagnostic
    text = f"{d.message}{_suffix(finding, report)}"
    if d.hint:
        text += f"\nhelp: {d.hint}"
    result: dict[str, Any] = {
        "ruleId": d.code,
        "ruleIndex": rule_index,
        "level": d.severity,
        "message": {"text": text},
    }
    if d.location is not None:
        result["locations"] = [
            {
                "physicalLocation": {
                    "artifactLocation": _sarif_artifact(d.location.file),
                    "region": {"startLine": d.location.line, "startColumn": d.location.column},
                }
            }
        ]
    if d.path:
        result["properties"] = {"path": d.path}
    if silenced:
        result["suppressions"] = [{"kind": "inSource", "justification": "# celery-policy: ignore[...] comment"}]
    return result


def _sarif_artifact(file: str) -> dict[str, Any]:
    """Paths below the working directory are relative to %SRCROOT% (what code scanning maps to the repository)."""
    path = Path(file).absolute()
    try:
        return {"uri": path.relative_to(Path.cwd()).as_posix(), "uriBaseId": "%SRCROOT%"}
    except ValueError:
        return {"uri": path.as_uri()}


def rule_markdown(entry: Rule) -> str:
    """A rule's documentation page (``docs/rules/CODE.md``), from the same docstring ``rules CODE`` prints."""
    facts = [f"Severity: **{entry.severity}**."]
    if entry.needs_broker:
        facts.append("Runs only with `--app` (or as `celery -A proj policy check`) and reads the app's broker.")
    elif entry.needs_app:
        facts.append("Runs only with `--app` (or as `celery -A proj policy check`).")
    if entry.emitted_by == "loader":
        facts.append("Reported while the file is read and validated.")
    if entry.aliases:
        facts.append(f"Formerly {', '.join(entry.aliases)}.")
    from celery_policy.lint.registry import HEADINGS

    out = [f"# {entry.code} {entry.name}", "", " ".join(facts), ""]
    for heading in HEADINGS:
        body = entry.section(heading)
        if not body:
            continue
        out += [f"## {heading.rstrip(':')}", ""]
        if heading == "Example:":
            first, _, rest = body.partition("\n")  # section() stripped the first line's indentation only
            out += ["```yaml", "\n".join(filter(None, [first, textwrap.dedent(rest).strip("\n")])), "```", ""]
        else:
            out += [body, ""]
    out += [
        "## Silencing it",
        "",
        f"- one place: `# celery-policy: ignore[{entry.code}]` at the end of the reported line,"
        " or on a line of its own just above it;",
        f"- one run: `celery-policy check --ignore {entry.code}`;",
        f'- the project: `ignore = ["{entry.code}"]` under `[tool.celery-policy]` in `pyproject.toml`.',
        "",
        f"`celery-policy rules {entry.code}` prints the same documentation.",
        "",
    ]
    return "\n".join(out)


def render_rule_list(rows: Sequence[tuple[str, str, str, str]]) -> str:
    """``celery-policy rules``: code, name, severity, one line each."""
    width = max((len(name) for _, name, _, _ in rows), default=0)
    return "".join(f"{code}  {name:<{width}}  {severity:<7}  {summary}\n" for code, name, severity, summary in rows)


def describe_rule(entry: Rule) -> str:
    """The text ``celery-policy rules CODE`` prints."""
    notes = []
    if entry.needs_broker:
        notes.append("needs --app and reads its broker")
    elif entry.needs_app:
        notes.append("needs --app")
    if entry.emitted_by == "loader":
        notes.append("reported while the file is read and validated")
    if entry.aliases:
        notes.append(f"formerly {', '.join(entry.aliases)}")
    head = f"{entry.code} {entry.name} ({entry.severity}{'; ' + '; '.join(notes) if notes else ''})"
    return f"{head}\n\n{entry.doc}\n"
