"""The check pipeline as a library: files in, a :class:`CheckReport` out (``celery-policy check`` prints it).

1. ``app``: import and snapshot the Celery app (a failure is a :class:`CheckUsageError`).
2. Read every file (a missing or unreadable one is a usage error); syntax problems stop here.
3. Merge the files in order; structural checks of the whole file (duplicate
   keys, each environment overlay on its own, every ``extends`` chain).
4. For the base file, ``env``, or the base and every environment
   (``all_envs``): apply the overlays, validate, run the lint rules.
5. Keep each finding once (the first place it shows; with ``all_envs`` a
   finding that never shows in the base file names its environments), filter
   by ``select``/``ignore``, report suppression comments that silence nothing
   (CP229), apply the configured severities, and set aside the findings that a
   ``# celery-policy: ignore[CODE]`` comment suppresses (:mod:`.suppressions`).

Unexpected input becomes findings, and a rule that crashes becomes a finding
of its own code; only the usage problems above raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

import celery_policy.lint.rules  # noqa: F401  (registers the rules)
from celery_policy.errors import Diagnostic, Location, PolicyError
from celery_policy.lint.appsnapshot import AppLoadError, AppSnapshot, load_app
from celery_policy.lint.context import LintContext, LintOptions
from celery_policy.lint.registry import RULES, find_rule, is_selected, matches_selector, unknown_selectors
from celery_policy.lint.report import CheckReport, Finding
from celery_policy.lint.suppressions import Suppressions, read_suppressions
from celery_policy.loader import (
    RawPolicy,
    SourceMap,
    UnreadableFileError,
    apply_environment,
    environment_chain,
    merge_raw,
    read_policy_file,
    translate_validation_error,
    validate_overlays,
)
from celery_policy.model import PolicyDocument
from celery_policy.references import ensure_import_root

UNUSED_SUPPRESSION = "CP229"  # registered in lint/rules/hygiene.py; emitted here, after every other rule ran

_Tagged = tuple[Diagnostic, str | None]  # a finding and the environment it showed in (None: base)


class CheckUsageError(Exception):
    """Not a finding: bad arguments, a missing file, an app that does not import (``check`` exits 2)."""


def check(
    files: Sequence[str],
    *,
    env: str | None = None,
    all_envs: bool = False,
    app: str | None = None,
    strict: bool = False,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    severity: Sequence[tuple[str, str]] = (),
    options: LintOptions | None = None,
) -> CheckReport:
    """Run the whole check and return the report. Raises :class:`CheckUsageError` for exit-2 situations.

    ``severity``: (selector, ``error`` | ``warning`` | ``off``) pairs from ``[tool.celery-policy]``; the most
    specific selector wins (a code or name over a prefix, a longer prefix over a shorter one), ``off``
    drops the rule like ``ignore``. Findings of the file's reading and validation (CP100-CP104, CP108,
    CP111, CP112) keep their severity: a worker refuses such a file whatever ``check`` says.
    """
    if not files:
        raise CheckUsageError("no policy file given")
    if env is not None and all_envs:
        raise CheckUsageError("--env and --all-envs exclude each other")
    bad = unknown_selectors([*select, *ignore, *(selector for selector, _ in severity)])
    if bad:
        raise CheckUsageError(f"unknown rule or prefix {', '.join(repr(b) for b in bad)} (see: celery-policy rules)")
    for selector, level in severity:
        entry = find_rule(selector)
        if entry is not None and entry.emitted_by == "loader" and level == "warning":
            msg = (
                f'severity {selector} = "warning": {entry.code} is found while the file is read and validated, '
                'and a worker refuses such a file; it stays an error ("off" hides it)'
            )
            raise CheckUsageError(msg)
    levels = _levels(severity)
    ignore = [*ignore, *(code for code, level in levels.items() if level == "off")]
    snapshot = _load_app(app)
    ensure_import_root(snapshot.root if snapshot is not None else None)

    envs: list[str | None] = [env] if env is not None else [None]
    tagged: list[_Tagged] = []
    raw = _read(files, tagged)
    every_env = False  # whether each environment the file defines was checked (unused suppressions need it)
    if raw is not None:
        tagged.extend((d, None) for d in raw.diagnostics)
        tagged.extend((d, None) for d in _structure(raw))
        clean = RawPolicy(raw.files, raw.data, raw.source)  # duplicate keys are reported above, not again per env
        if all_envs:
            envs += _environment_names(raw)
        every_env = all_envs or not _environment_names(raw)
        cache: dict[str, Any] = {}  # validated task policies, shared by the environments (see LintContext)
        for name in envs:
            found, linted = _check_env(clean, name, snapshot, select, ignore, options, cache)
            tagged.extend((d, name) for d in found)
            every_env = every_env and linted  # rules that never ran cannot show a suppression is unused
    mode = "env" if env is not None else "all" if all_envs else "base"
    findings = _dedupe(tagged, mode)
    findings = [f for f in findings if is_selected(f.diagnostic.code, select, ignore)]
    comments = read_suppressions(files)
    if raw is not None and every_env and is_selected(UNUSED_SUPPRESSION, select, ignore):
        ran = [code for code in RULES if _runs(code, snapshot, select, ignore)]
        findings += _unused_suppressions(comments, [f.diagnostic for f in findings], ran)
    findings = [_with_level(f, levels) for f in findings]
    findings.sort(key=lambda f: _order(f, files))
    kept = [f for f in findings if not comments.suppresses(f.diagnostic)]
    suppressed = [f for f in findings if comments.suppresses(f.diagnostic)]
    errors = any(f.diagnostic.is_error for f in kept)
    warnings = any(not f.diagnostic.is_error for f in kept)
    exit_code = 1 if errors or (strict and warnings) else 0  # what the JSON and SARIF reports carry (cli/exit.py)
    return CheckReport(
        tuple(files), tuple(kept), tuple(envs), exit_code, mode, suppressed=tuple(suppressed), notes=comments.problems
    )


def _load_app(spec: str | None) -> AppSnapshot | None:
    if spec is None:
        return None
    try:
        return load_app(spec)
    except AppLoadError as exc:
        raise CheckUsageError(str(exc)) from exc


def _read(files: Sequence[str], tagged: list[_Tagged]) -> RawPolicy | None:
    """Read and merge the files; None (with findings added) when one cannot be parsed."""
    layers: list[RawPolicy] = []
    for path in files:
        try:
            layers.append(read_policy_file(path))
        except UnreadableFileError as exc:
            raise CheckUsageError(str(exc)) from exc
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


def boot_findings(
    raw: RawPolicy,
    env: str | None,
    validated: tuple[PolicyDocument, SourceMap] | None = None,
) -> list[Diagnostic]:
    """The error findings ``check`` (without ``--app``) reports for ``env``: what must stop a worker's boot.

    Every registered rule of error severity that needs no app runs, so a rule
    added to the registry is enforced at boot too. Findings that a
    ``# celery-policy: ignore[CODE]`` comment suppresses do not count, as in
    ``check``. Exception classes and hooks are not imported here (the modules
    that define them may not be imported yet); the runtime imports them when
    it binds the first task and stops there with the same CP107/CP116 finding.
    ``validated``: the document and source map of ``env`` when the caller has them
    (``install()`` does), so they are not built twice.
    """
    found = [d for d in raw.diagnostics if d.is_error]
    found += [d for d in _structure(raw) if d.is_error]
    clean = RawPolicy(raw.files, raw.data, raw.source)
    found += _check_env(clean, env, None, (), (), errors_only=True, import_classes=False, validated=validated)[0]
    comments = read_suppressions(list(raw.files))
    kept: dict[Any, Diagnostic] = {}
    for diagnostic in found:
        if diagnostic.is_error and not comments.suppresses(diagnostic):
            kept.setdefault(_key(diagnostic), diagnostic)
    return sorted(kept.values(), key=lambda d: _order(Finding(d, ""), raw.files))


def _check_env(
    raw: RawPolicy,
    env: str | None,
    app: AppSnapshot | None,
    select: Sequence[str],
    ignore: Sequence[str],
    options: LintOptions | None = None,
    cache: dict[str, Any] | None = None,
    *,
    errors_only: bool = False,
    import_classes: bool = True,
    validated: tuple[PolicyDocument, SourceMap] | None = None,
) -> tuple[list[Diagnostic], bool]:
    """Validate the document as seen in ``env`` and run every selected lint rule over it.

    Also says whether the rules ran (False when the document did not validate). ``errors_only``: only
    error-severity rules (the boot gate); ``import_classes``: False at worker boot, where the modules that
    define exception classes may not be imported yet; ``validated``: the document and source map of ``env``
    when the caller has them."""
    if validated is not None:
        document, source = validated
    else:
        try:
            effective = apply_environment(raw, env)
        except PolicyError as exc:
            return list(exc.diagnostics), False
        except Exception as exc:
            return [_internal("CP101", "applying the environment overlays", exc, raw)], False
        try:
            document = PolicyDocument.model_validate(effective.data)
        except ValidationError as exc:
            return translate_validation_error(exc, effective), False
        source = effective.source
    ctx = LintContext(
        document,
        source,
        raw,
        env,
        app,
        options=options or LintOptions(),
        policy_cache=cache,
        import_classes=import_classes,
    )
    found: list[Diagnostic] = []
    complete = True
    for code, entry in RULES.items():
        if entry.emitted_by != "lint" or not _runs(code, app, select, ignore):
            continue
        if errors_only and entry.severity != "error":
            continue
        try:
            found.extend(entry.run(ctx))
        except Exception as exc:
            complete = False
            found.append(_internal(code, f"rule {code} {entry.name}", exc, raw))
    return found, complete


def _runs(code: str, app: AppSnapshot | None, select: Sequence[str], ignore: Sequence[str]) -> bool:
    """Whether the rule ``code`` runs in this check (selected, and its ``--app`` given when it needs one)."""
    entry = RULES[code]
    return is_selected(code, select, ignore) and not (entry.needs_app and app is None)


def _unused_suppressions(comments: Suppressions, findings: Sequence[Diagnostic], ran: Sequence[str]) -> list[Finding]:
    """CP229: selectors of suppression comments that silence nothing, when every rule they name ran."""
    found: list[Finding] = []
    name = RULES[UNUSED_SUPPRESSION].name
    for comment, selector in comments.unused(findings):
        if any(matches_selector(UNUSED_SUPPRESSION, s) for s in comment.selectors):
            continue  # ignore[CP229] keeps the comment's other selectors, as ruff's noqa: RUF100 does
        covered = [code for code in RULES if matches_selector(code, selector)]
        if not covered or any(code not in ran for code in covered):
            continue  # a rule that did not run (no --app, not selected) may well fire there
        line = "this line" if comment.target == comment.location.line else f"the next line ({comment.target})"
        message = f"unused suppression: {selector} reports nothing on {line}"
        hint = f"remove {selector} from the comment (or the whole comment) so it does not hide a future finding"
        found.append(Finding(Diagnostic(UNUSED_SUPPRESSION, message, comment.location, hint, "warning"), name))
    return found


def _levels(severity: Sequence[tuple[str, str]]) -> dict[str, str]:
    """code -> configured level for every rule a selector covers (the most specific selector wins)."""
    levels: dict[str, tuple[int, str]] = {}
    for selector, level in severity:
        for code, entry in RULES.items():
            if not matches_selector(code, selector):
                continue
            exact = selector.upper() in (code, *entry.aliases) or selector.lower() == entry.name
            rank = 1000 if exact else len(selector)
            if code not in levels or rank >= levels[code][0]:
                levels[code] = (rank, level)
    return {code: level for code, (_, level) in levels.items()}


def _with_level(finding: Finding, levels: dict[str, str]) -> Finding:
    diagnostic = finding.diagnostic
    level = levels.get(diagnostic.code)
    entry = RULES.get(diagnostic.code)
    if level not in ("error", "warning") or entry is None or entry.emitted_by == "loader":
        return finding
    if level == diagnostic.severity:
        return finding
    return replace(finding, diagnostic=replace(diagnostic, severity="error" if level == "error" else "warning"))


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
