"""The JSON Schema of the policy file, for editors (yaml-language-server) and CI."""

from __future__ import annotations

import json
from typing import Any

from celery_policy.model import PolicyDocument

SCHEMA_ID = "https://celery-policy.dev/schemas/celery-policy.schema.json"


def policy_json_schema() -> dict[str, Any]:
    """The schema generated from :class:`PolicyDocument`."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "celery-policy file (version 1)"
    return schema


def render_schema() -> str:
    """The schema as committed in ``schemas/celery-policy.schema.json``."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"
