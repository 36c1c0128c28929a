"""The committed JSON Schema and the example policies stay in step with the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_policy import PolicyError, load
from celery_policy.cli import main
from celery_policy.patterns import is_glob
from celery_policy.schema import SCHEMA_ID, policy_json_schema, render_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "celery-policy.schema.json"
POLICIES = ROOT / "policies"


def test_the_committed_schema_is_up_to_date() -> None:
    """Regenerate with: celery-policy schema > schemas/celery-policy.schema.json"""
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_schema()


def test_the_schema_command_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(encoding="utf-8")


def test_the_schema_names_its_dialect_and_id() -> None:
    schema = json.loads(render_schema())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert schema["required"] == ["version"]
    assert schema["additionalProperties"] is False


def test_durations_accept_numbers_and_unit_strings_in_the_schema() -> None:
    backoff = policy_json_schema()["$defs"]["Backoff"]["properties"]["initial"]
    types = sorted(option["type"] for option in backoff["anyOf"])
    assert types == ["number", "string"]


def example_policies() -> list[Path]:
    return sorted([*POLICIES.glob("*.yaml"), *POLICIES.glob("*.yml")])


def test_every_example_policy_loads_in_every_environment() -> None:
    """Examples in policies/ import their exception classes from the repository root, as a worker would.

    Passes with no examples; every file that appears is checked, none is skipped.
    """
    problems: list[str] = []
    for path in example_policies():
        try:
            base = load(path, import_root=str(ROOT))
            for env in [None, *base.environments]:
                policy = load(path, env=env, import_root=str(ROOT))
                for name in policy.document.tasks:
                    if not is_glob(name):
                        policy.for_task(name)  # raises on a pattern conflict (CP110)
        except PolicyError as exc:
            problems.append(f"{path.relative_to(ROOT)}:\n{exc}")
    assert not problems, "\n".join(problems)
