"""Write docs/rules/*.md from the rule registry's docstrings (what `celery-policy rules CODE` prints).

.venv/bin/python docs/generate_rules.py          # rewrite the pages
.venv/bin/python docs/generate_rules.py --check  # exit 1 when a page is missing or stale (tests/unit/test_docs.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import celery_policy.lint.rules  # noqa: F401  (registers the rules)
from celery_policy.lint.registry import RULES
from celery_policy.lint.report import rule_markdown

RULES_DIR = Path(__file__).resolve().parent / "rules"
APP_NOTE = " (needs `--app`)"
INTRO = (
    "Generated from the rule docstrings by `docs/generate_rules.py`; `celery-policy rules CODE` prints the same text.\n"
    "CP1xx are structural errors, CP2xx reliability warnings, CP3xx cross-checks against the Celery app (`--app`)."
)


def pages() -> dict[str, str]:
    """File name -> content of every page, the index included."""
    found = {f"{code}.md": rule_markdown(RULES[code]) for code in sorted(RULES)}
    rows = [
        f"| [{r.code}]({r.code}.md) | `{r.name}` | {r.severity} | {r.summary}{APP_NOTE if r.needs_app else ''} |"
        for r in sorted(RULES.values(), key=lambda r: r.code)
    ]
    found["README.md"] = "\n".join(
        [
            "# Lint rules",
            "",
            INTRO,
            "",
            "| code | name | severity | what it does |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    return found


def _current(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def main(argv: list[str]) -> int:
    wanted = pages()
    if "--check" in argv:
        stale = [
            name
            for name, text in wanted.items()
            if not (RULES_DIR / name).is_file() or (RULES_DIR / name).read_text() != text
        ]
        extra = sorted(p.name for p in RULES_DIR.glob("*.md") if p.name not in wanted)
        for name in stale:
            print(f"docs/rules/{name} is missing or stale", file=sys.stderr)
        for name in extra:
            print(f"docs/rules/{name} documents no registered rule", file=sys.stderr)
        if stale or extra:
            print("run: .venv/bin/python docs/generate_rules.py", file=sys.stderr)
            return 1
        return 0
    RULES_DIR.mkdir(exist_ok=True)
    for name, text in wanted.items():
        (RULES_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
