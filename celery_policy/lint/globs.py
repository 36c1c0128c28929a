"""Can two task-name globs match a common name? An exact answer, with a witness.

Each :mod:`fnmatch` pattern is a small NFA over its atoms (a literal, ``?``,
a ``[class]``, ``*``). A breadth-first search over the product of the two
NFAs finds the shortest name both accept, or proves there is none.

The alphabet is finite without losing exactness: every character the two
patterns mention (as a literal or inside a class, including range ends)
splits the code-point line at ``c`` and ``c + 1``; each resulting interval is
treated alike by every atom of both patterns, so one representative per
interval is enough.
"""

from __future__ import annotations

import fnmatch
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_MAX_CODEPOINT = 0x10FFFF
_PREFERRED = "abcdefghijklmnopqrstuvwxyz0123456789_ABCDEFGHIJKLMNOPQRSTUVWXYZ-"


@dataclass(frozen=True, slots=True)
class _Atom:
    star: bool = False
    literal: str | None = None  # one character
    matcher: re.Pattern[str] | None = None  # '?' and [classes]; None with literal None = any character

    def accepts(self, ch: str) -> bool:
        if self.literal is not None:
            return ch == self.literal
        if self.matcher is not None:
            return self.matcher.match(ch) is not None
        return True


def _atoms(pattern: str) -> list[_Atom]:
    """Split like :func:`fnmatch.translate` does; a class is matched by fnmatch's own regex for it."""
    atoms: list[_Atom] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if not atoms or not atoms[-1].star:
                atoms.append(_Atom(star=True))
        elif ch == "?":
            atoms.append(_Atom())
        elif ch == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                atoms.append(_Atom(literal="["))
            else:
                atoms.append(_Atom(matcher=re.compile(fnmatch.translate(pattern[i - 1 : j + 1]))))
                i = j + 1
        else:
            atoms.append(_Atom(literal=ch))
    return atoms


def _alphabet(*patterns: str) -> list[str]:
    cuts = {0}
    for pattern in patterns:
        for ch in pattern:
            code = ord(ch)
            cuts.add(code)
            if code < _MAX_CODEPOINT:
                cuts.add(code + 1)
    bounds = sorted(cuts)
    letters: list[str] = []
    for index, start in enumerate(bounds):
        high = bounds[index + 1] - 1 if index + 1 < len(bounds) else _MAX_CODEPOINT
        low = 0xE000 if 0xD800 <= start <= 0xDFFF else start  # lone surrogates never occur in a task name
        if low <= high:
            letters.append(_readable(low, high))
    # readable letters first, so the breadth-first search spells a witness people can read
    return sorted(letters, key=_reading_order)


def _readable(low: int, high: int) -> str:
    """A representative of ``[low, high]`` that reads well in a message (the witness name)."""
    for ch in _PREFERRED:
        if low <= ord(ch) <= high:
            return ch
    return chr(low)


def _closure(atoms: list[_Atom], state: int) -> frozenset[int]:
    """States reachable without reading: a ``*`` may match nothing."""
    found = {state}
    while state < len(atoms) and atoms[state].star:
        state += 1
        found.add(state)
    return frozenset(found)


def _step(atoms: list[_Atom], states: frozenset[int], ch: str) -> frozenset[int]:
    after: set[int] = set()
    for state in states:
        if state >= len(atoms):
            continue
        atom = atoms[state]
        if atom.star:
            after |= _closure(atoms, state)
        elif atom.accepts(ch):
            after |= _closure(atoms, state + 1)
    return frozenset(after)


def _literal_ends(pattern: str) -> tuple[str, str]:
    """The literal text before the first and after the last wildcard character (a safe under-estimate)."""
    first = min((pattern.find(ch) for ch in "*?[" if ch in pattern), default=len(pattern))
    last = max((pattern.rfind(ch) for ch in "*?[]" if ch in pattern), default=-1)
    return pattern[:first], pattern[last + 1 :] if first < len(pattern) else ""


def may_overlap(first: str, second: str) -> bool:
    """A cheap necessary condition: the literal prefixes (and suffixes) of both globs agree."""
    head_a, tail_a = _literal_ends(first)
    head_b, tail_b = _literal_ends(second)
    heads_agree = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails_agree = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads_agree and tails_agree


def candidate_pairs(patterns: Sequence[str]) -> Iterator[tuple[str, str]]:
    """Pairs (in the given order) whose literal prefixes agree: the only ones that can overlap.

    Patterns are bucketed by literal prefix, so 1,000 globs with distinct prefixes
    cost a few look-ups each instead of half a million pair checks.
    """
    order = {pattern: index for index, pattern in enumerate(patterns)}
    by_head: dict[str, list[str]] = {}
    for pattern in patterns:
        by_head.setdefault(_literal_ends(pattern)[0], []).append(pattern)
    for head, members in by_head.items():
        for index, first in enumerate(members):
            for second in members[index + 1 :]:
                yield first, second
        for cut in range(len(head)):
            for shorter in by_head.get(head[:cut], ()):
                for member in members:
                    yield (shorter, member) if order[shorter] < order[member] else (member, shorter)


def common_match(first: str, second: str, *, max_states: int = 100_000) -> str | None:
    """The shortest non-empty name both globs match, or None when there is none.

    Matching is :func:`fnmatch.fnmatchcase` (case-sensitive, ``*`` crosses dots).
    """
    if not may_overlap(first, second):
        return None
    a, b = _atoms(first), _atoms(second)
    alphabet = _alphabet(first, second)
    start = (_closure(a, 0), _closure(b, 0))
    parents: dict[tuple[frozenset[int], frozenset[int]], tuple[tuple[frozenset[int], frozenset[int]], str] | None] = {
        start: None
    }
    queue = deque([start])
    while queue and len(parents) <= max_states:
        current = queue.popleft()
        for ch in alphabet:
            nxt = (_step(a, current[0], ch), _step(b, current[1], ch))
            if not nxt[0] or not nxt[1]:
                continue
            if len(a) in nxt[0] and len(b) in nxt[1]:
                return _spell(parents, current) + ch
            if nxt not in parents:
                parents[nxt] = (current, ch)
                queue.append(nxt)
    return None


def _spell(
    parents: dict[tuple[frozenset[int], frozenset[int]], tuple[tuple[frozenset[int], frozenset[int]], str] | None],
    state: tuple[frozenset[int], frozenset[int]],
) -> str:
    chars: list[str] = []
    link = parents[state]
    while link is not None:
        previous, ch = link
        chars.append(ch)
        link = parents[previous]
    return "".join(reversed(chars))


def _reading_order(ch: str) -> tuple[int, bool, str]:
    rank = _PREFERRED.index(ch) if ch in _PREFERRED else len(_PREFERRED)
    return (rank, not ch.isprintable(), ch)
