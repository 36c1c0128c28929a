"""Task-name patterns: exact names and globs, their specificity, fast matching.

A glob uses :mod:`fnmatch` syntax (``*``, ``?``, ``[seq]``, ``[!seq]``), matched
case-sensitively as Celery task names are. Specificity orders patterns:
fewer wildcards first, then a longer literal prefix.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

_WILDCARD = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")


def is_glob(name: str) -> bool:
    """True when ``name`` contains glob syntax."""
    return any(ch in name for ch in "*?[")


@dataclass(frozen=True, slots=True)
class Specificity:
    wildcards: int
    prefix_len: int

    def sort_key(self) -> tuple[int, int]:
        """Ascending = less specific first (so later layers win)."""
        return (-self.wildcards, self.prefix_len)


def specificity(pattern: str) -> Specificity:
    """``orders.*`` -> 1 wildcard, prefix 7; ``*.charge`` -> 1 wildcard, prefix 0."""
    wildcards = len(_WILDCARD.findall(pattern))
    prefix_len = len(literal_prefix(pattern))
    return Specificity(wildcards, prefix_len)


def literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first wildcard."""
    for index, ch in enumerate(pattern):
        if ch in "*?[":
            return pattern[:index]
    return pattern


@functools.cache
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled regex of a glob; cached because ``re``'s own cache holds only 512 and a big policy has more."""
    return re.compile(fnmatch.translate(pattern))


@functools.cache
def glob_problem(pattern: str) -> str | None:
    """Why a glob can never match a task name, or None when it is fine."""
    if not pattern.strip():
        return "an empty pattern matches no task"
    if pattern != pattern.strip():
        return "leading or trailing whitespace: task names never have it"
    index = 0
    while index < len(pattern):
        ch = pattern[index]
        if ch == "[":
            end = pattern.find("]", index + 2 if pattern[index + 1 : index + 2] in ("!", "]") else index + 1)
            if pattern[index + 1 : index + 3] == "!]":
                end = pattern.find("]", index + 3)
            if end == -1:
                return f"unclosed '[' at position {index + 1}"
            body = pattern[index + 1 : end]
            if body.startswith("!"):
                body = body[1:]
            if not body:
                return f"empty character class at position {index + 1}"
            for start, stop in re.findall(r"(.)-(.)", body):
                if start > stop:
                    return f"character range '{start}-{stop}' is reversed"
            index = end + 1
            continue
        index += 1
    try:
        compile_glob(pattern)
    except re.error as exc:
        return f"not a valid pattern: {exc}"
    return None


class PatternIndex:
    """Finds every glob matching a name without testing every glob.

    Globs are bucketed by literal prefix; a name only tests the buckets of its
    own prefixes, so 1,000 patterns with distinct prefixes cost a few dict
    look-ups per name instead of 1,000 regex matches.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._buckets: dict[str, list[tuple[str, re.Pattern[str]]]] = defaultdict(list)
        for pattern in patterns:
            regex = compile_glob(pattern)
            self._buckets[literal_prefix(pattern)].append((pattern, regex))
        self._prefix_lengths = sorted({len(p) for p in self._buckets})

    def matches(self, name: str) -> list[str]:
        """All patterns that match ``name`` (unordered)."""
        found: list[str] = []
        buckets = self._buckets
        size = len(name)
        for length in self._prefix_lengths:
            if length > size:
                break
            bucket = buckets.get(name[:length])
            if bucket:
                found.extend(p for p, regex in bucket if regex.match(name))
        return found


def unmatched_names(policy_names: Iterable[str], registered: Iterable[str]) -> list[tuple[str, str | None]]:
    """Exact names and globs of a policy that match no registered task, each with a close registered name.

    Celery's own ``celery.*`` tasks are never reported. Returns ``(name, suggestion or None)``
    in the order given.
    """
    import difflib

    tasks = sorted(name for name in registered if not name.startswith("celery."))
    found: list[tuple[str, str | None]] = []
    for name in policy_names:
        if name.startswith("celery."):
            continue
        if is_glob(name):
            pattern = compile_glob(name)
            if any(pattern.fullmatch(task) for task in tasks):
                continue
        elif name in tasks:
            continue
        close = difflib.get_close_matches(name, tasks, n=1, cutoff=0.6)
        found.append((name, close[0] if close else None))
    return found
