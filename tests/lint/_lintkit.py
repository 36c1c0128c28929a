"""Helpers for the lint tests: the rule fixture files and the CLI result type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
APPS = HERE / "apps"


@dataclass(frozen=True)
class Case:
    """One named `pass:` or `fail:` case of a rule fixture (tests/lint/fixtures/CPxxx.yaml)."""

    code: str
    kind: str  # "pass" or "fail"
    name: str
    policy: str
    app: str | None = None
    args: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.code}-{self.kind}-{self.name}"


def load_fixture(path: Path) -> list[Case]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases: list[Case] = []
    for kind in ("pass", "fail"):
        for name, body in (data.get(kind) or {}).items():
            extra = {k: v for k, v in body.items() if k not in {"policy", "app", "args", "lines"}}
            cases.append(
                Case(
                    path.stem,
                    kind,
                    str(name),
                    body["policy"],
                    body.get("app"),
                    tuple(body.get("args") or ()),
                    tuple(body.get("lines") or ()),
                    extra,
                )
            )
    return cases


def all_cases() -> list[Case]:
    return [case for path in sorted(FIXTURES.glob("CP*.yaml")) for case in load_fixture(path)]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)
