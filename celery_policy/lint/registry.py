"""The rule registry: ``RULES`` maps a stable code (``CP103``) to its :class:`Rule`.

A rule is one function decorated with :func:`rule`. Its docstring has three
fixed headings, which ``celery-policy rules CODE`` prints::

    What it does: one sentence (the first one is the summary in the rule list).

    Why: the failure it prevents.

    Example:
        bad:  <policy YAML that triggers the rule>
        good: <the fix>

Some CP1xx findings are produced by the loader while it reads and validates
the file (syntax, schema, unknown keys...). Those rules are registered with
``emitted_by="loader"`` so they are documented and can be selected or ignored
like any other; their functions yield nothing. Findings about the check run
itself (an unused suppression comment) are ``emitted_by="engine"``.

What a rule needs besides the policy is declared at registration, so callers
can pick the rules they can run (``check`` without ``--app``, validation at
worker boot) without running them: ``needs_app`` (quiet without ``--app``) and
``needs_broker`` (connects to the app's broker; implies ``needs_app``). A rule
with neither is :attr:`Rule.standalone`: it sees only the policy files (rules
that also use the app when it is given, such as CP205, are standalone).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from celery_policy.errors import Diagnostic, Severity

if TYPE_CHECKING:
    from celery_policy.lint.context import LintContext

RuleFunc = Callable[["LintContext"], Iterator[Diagnostic]]
EmittedBy = Literal["lint", "loader", "engine"]

HEADINGS = ("What it does:", "Why:", "Example:")
_CODE = re.compile(r"^CP[1-3]\d\d$")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True, slots=True)
class Rule:
    """One lint rule: stable code, kebab-case name, default severity and its documentation."""

    code: str
    name: str
    severity: Severity
    needs_app: bool
    emitted_by: EmittedBy
    func: RuleFunc
    aliases: tuple[str, ...] = ()
    needs_broker: bool = False

    @property
    def standalone(self) -> bool:
        """True when the rule needs neither ``--app`` nor a broker: the policy files are all it reads."""
        return not (self.needs_app or self.needs_broker)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    def section(self, heading: str) -> str:
        """The text under one of :data:`HEADINGS` (empty when missing)."""
        doc = self.doc
        start = doc.find(heading)
        if start == -1:
            return ""
        start += len(heading)
        ends = [doc.find(other, start) for other in HEADINGS if other != heading]
        end = min([e for e in ends if e != -1], default=len(doc))
        return doc[start:end].strip()

    @property
    def summary(self) -> str:
        """The first sentence of "What it does:" on one line."""
        text = " ".join(self.section("What it does:").split())
        head, dot, _ = text.partition(". ")
        return head.rstrip(".") if dot or text.endswith(".") else text

    def run(self, ctx: LintContext) -> Iterator[Diagnostic]:
        """The rule's findings, each tagged with this rule's code and severity."""
        for found in self.func(ctx):
            if found.code == self.code and found.severity == self.severity:
                yield found
            else:
                yield Diagnostic(self.code, found.message, found.location, found.hint, self.severity, found.path)


RULES: dict[str, Rule] = {}


def rule(
    code: str,
    name: str,
    *,
    severity: Severity = "error",
    needs_app: bool = False,
    needs_broker: bool = False,
    emitted_by: EmittedBy = "lint",
    aliases: Iterable[str] = (),
) -> Callable[[RuleFunc], RuleFunc]:
    """Register a rule function under ``code``. Raises ValueError for a malformed or reused code or name.

    ``needs_broker`` implies ``needs_app`` (the broker is the app's).
    """

    def register(func: RuleFunc) -> RuleFunc:
        if not _CODE.match(code):
            msg = f"rule code {code!r} is not CP plus 3 digits in CP1xx-CP3xx"
            raise ValueError(msg)
        if not _NAME.match(name):
            msg = f"rule name {name!r} is not kebab-case"
            raise ValueError(msg)
        taken = {c for r in RULES.values() for c in (r.code, *r.aliases)}
        names = {r.name for r in RULES.values()}
        alias_tuple = tuple(aliases)
        for candidate in (code, *alias_tuple):
            if candidate in taken:
                msg = f"rule code {candidate} is registered twice"
                raise ValueError(msg)
        if name in names:
            msg = f"rule name {name!r} is registered twice"
            raise ValueError(msg)
        RULES[code] = Rule(code, name, severity, needs_app or needs_broker, emitted_by, func, alias_tuple, needs_broker)
        return func

    return register


def find_rule(text: str) -> Rule | None:
    """A rule by code, alias or name (case-insensitive)."""
    wanted = text.strip()
    for candidate in RULES.values():
        if wanted.upper() in (candidate.code, *candidate.aliases) or wanted.lower() == candidate.name:
            return candidate
    return None


def matches_selector(code: str, selector: str) -> bool:
    """True when ``selector`` (a code, an alias, a prefix such as ``CP2`` or a rule name) covers ``code``."""
    found = RULES.get(code)
    if found is not None and (selector.lower() == found.name or selector.upper() in found.aliases):
        return True
    return code.startswith(selector.upper())


def unknown_selectors(selectors: Iterable[str]) -> list[str]:
    """Selectors that cover no registered rule."""
    return [s for s in selectors if not any(matches_selector(code, s) for code in RULES)]


def is_selected(code: str, select: Iterable[str], ignore: Iterable[str]) -> bool:
    """``--select`` narrows the rules (all when empty), ``--ignore`` removes rules; ignore wins."""
    select = list(select)
    if select and not any(matches_selector(code, s) for s in select):
        return False
    return not any(matches_selector(code, s) for s in ignore)
