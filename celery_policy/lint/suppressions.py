"""``# celery-policy: ignore[CP201, CP205]`` comments in policy files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from celery_policy.errors import Diagnostic, Location
from celery_policy.lint.registry import matches_selector, unknown_selectors

_SUPPRESS = re.compile(r"#\s*celery-policy:\s*ignore\[([^\]]*)\]")


@dataclass(frozen=True, slots=True)
class Comment:
    """One suppression comment: where it is written and the line it covers."""

    location: Location  # the comment's ``#``
    target: int  # the line whose findings it covers
    selectors: tuple[str, ...]


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
    comments: tuple[Comment, ...] = ()

    def suppresses(self, diagnostic: Diagnostic) -> bool:
        location = diagnostic.location
        if location is None:
            return False
        selectors = self.by_line.get((location.file, location.line), ())
        return any(matches_selector(diagnostic.code, s) for s in selectors)

    def unused(self, findings: Iterable[Diagnostic]) -> Iterator[tuple[Comment, str]]:
        """Each (comment, selector) that covers none of ``findings`` (which must be every finding of the
        run, before suppression)."""
        hit: set[tuple[str, int, str]] = set()
        for diagnostic in findings:
            location = diagnostic.location
            if location is None:
                continue
            for selector in self.by_line.get((location.file, location.line), ()):
                if matches_selector(diagnostic.code, selector):
                    hit.add((location.file, location.line, selector))
        for comment in self.comments:
            for selector in comment.selectors:
                if (comment.location.file, comment.target, selector) not in hit:
                    yield comment, selector


def read_suppressions(files: Sequence[str]) -> Suppressions:
    """Scan ``files`` for suppression comments (unreadable files have none)."""
    by_line: dict[tuple[str, int], tuple[str, ...]] = {}
    problems: list[str] = []
    comments: list[Comment] = []
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
            comments.append(Comment(Location(path, number, found.start() + 1), target, selectors))
    return Suppressions(by_line, tuple(problems), tuple(comments))
