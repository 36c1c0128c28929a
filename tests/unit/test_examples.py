"""The shipped examples keep working: every ``policies/*.yaml``, the README's YAML, and the shop app.

Exception classes and hooks in the examples import from the repository root
(the ``shop`` package lives there), as they would from a project's directory.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.servers import REPO_ROOT, RedisServer, WorkerProcess

import celery_policy
from celery_policy import cli
from celery_policy.cli.exit import OK
from celery_policy.patterns import is_glob
from celery_policy.references import import_exception, import_object

POLICY_DIR = REPO_ROOT / "policies"
POLICY_FILES = sorted(POLICY_DIR.glob("*.yaml"))
WEB_SHOP = POLICY_DIR / "celery-policy.yaml"
DEMO = POLICY_DIR / "demo.yaml"
MODELINE = "# yaml-language-server: $schema=../schemas/celery-policy.schema.json"


def _load(path: Path, env: str | None = None) -> celery_policy.Policy:
    return celery_policy.load(path, env=env, import_root=str(REPO_ROOT))


def _sample_task_names(policy: celery_policy.Policy) -> list[str]:
    """Every exact task name, a name each glob matches, and one name nothing matches."""
    names = ["unmatched.task"]
    for key in policy.document.tasks:
        names.append(key.replace("*", "example").replace("?", "x") if is_glob(key) else key)
    return names


def test_the_examples_directory_holds_the_web_shop_and_the_demo_policy() -> None:
    assert WEB_SHOP in POLICY_FILES
    assert DEMO in POLICY_FILES


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_example_policy_starts_with_the_schema_modeline(path: Path) -> None:
    assert path.read_text().splitlines()[0] == MODELINE
    assert (path.parent / "../schemas/celery-policy.schema.json").resolve().is_file()


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_example_policy_loads_and_resolves_in_every_environment(path: Path) -> None:
    base = _load(path)
    for env in [None, *base.environments]:
        policy = _load(path, env=env)
        for name in _sample_task_names(policy):
            resolved = policy.for_task(name)
            assert resolved.task == name
            for ref in resolved.expand([*resolved.policy.retry.on, *resolved.policy.retry.never]):
                import_exception(ref)
            for target in resolved.policy.hooks.model_dump().values():
                if target is not None:
                    assert callable(import_object(target))


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_delay_from_names_an_attribute_the_exception_really_has(path: Path) -> None:
    policy = _load(path)
    for name in _sample_task_names(policy):
        resolved = policy.for_task(name)
        for rule in resolved.policy.retry.rules:
            if rule.delay_from is None:
                continue
            for ref in resolved.expand(rule.on):
                exc = import_exception(ref)()
                assert isinstance(getattr(exc, rule.delay_from), (int, float)), (name, ref, rule.delay_from)


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_idempotency_keys_name_parameters_of_the_shop_tasks(path: Path) -> None:
    """The key templates use kwargs[...] that the task functions in shop/tasks.py really take."""
    params = _shop_task_parameters()
    policy = _load(path)
    for name, section in policy.document.tasks.items():
        if section.idempotency is None:
            continue
        for field in re.findall(r"kwargs\[(\w+)\]", section.idempotency.key):
            assert field in params[name], (name, field)


def _shop_task_parameters() -> dict[str, list[str]]:
    """Task name -> parameter names of every ``@app.task(name=...)`` in shop/tasks.py (read, not imported)."""
    tree = ast.parse((REPO_ROOT / "shop" / "tasks.py").read_text())
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                        found[str(keyword.value.value)] = [a.arg for a in (*node.args.args, *node.args.kwonlyargs)]
    return found


# --- the web shop policy: spot checks of resolved values ------------------------------------------


@pytest.fixture(scope="module")
def shop_policy() -> celery_policy.Policy:
    return _load(WEB_SHOP)


def test_web_shop_defaults_are_the_guides_reliable_baseline(shop_policy: celery_policy.Policy) -> None:
    resolved = shop_policy.for_task("anything.else")
    policy = resolved.policy
    assert (policy.timeout.soft, policy.timeout.hard) == (300.0, 330.0)
    assert policy.ack.late is True
    assert policy.ack.reject_on_worker_lost is True
    assert policy.ack.max_redeliveries == 3
    assert policy.dead_letter.enabled is True
    assert policy.log.args == "redact"
    assert "card_token" in policy.log.redact_keys
    assert resolved.expand(policy.retry.on) == ("builtins.TimeoutError", "builtins.ConnectionError")
    worker = shop_policy.document.worker
    assert worker.prefetch_multiplier == 1
    assert worker.track_started is True
    assert worker.result_expires == 3600.0
    assert worker.visibility_timeout == 7200.0


def test_web_shop_charge_is_idempotent_and_rate_limits_have_their_own_counter(
    shop_policy: celery_policy.Policy,
) -> None:
    resolved = shop_policy.for_task("orders.charge")
    policy = resolved.policy
    assert policy.retry.max_retries == 8
    assert [(r.on, r.delay_from, r.max_retries) for r in policy.retry.rules] == [
        (["shop.errors.RateLimited"], "retry_after", 20)
    ]
    assert policy.idempotency is not None
    assert policy.idempotency.key == "charge:{kwargs[order_id]}"
    assert policy.idempotency.ttl == 86400.0
    assert policy.route is not None
    assert policy.route.queue == "orders"
    assert resolved.source_of("route.queue").layer == 'tasks."orders.*"'
    assert (policy.timeout.soft, policy.timeout.hard) == (60.0, 75.0)
    assert policy.hooks.on_dead_letter == "shop.alerts.page_oncall"
    assert policy.retry.backoff.initial == 1.0  # not set by the task: per-field merge keeps the default


def test_web_shop_production_overlay_lengthens_the_charge_timeout_only(shop_policy: celery_policy.Policy) -> None:
    charge = shop_policy.for_task("orders.charge", env="production")
    assert (charge.policy.timeout.soft, charge.policy.timeout.hard) == (90.0, 120.0)
    assert charge.source_of("timeout.soft").overlay == "env:production"
    assert charge.policy.retry.max_retries == 8
    ship = shop_policy.for_task("orders.ship", env="production")
    assert (ship.policy.timeout.soft, ship.policy.timeout.hard) == (120.0, 150.0)
    assert shop_policy.with_env("production").document.worker.max_tasks_per_child == 1000


def test_web_shop_development_overlay_speeds_up_defaults_but_not_task_settings(
    shop_policy: celery_policy.Policy,
) -> None:
    other = shop_policy.for_task("unmatched.task", env="development").policy
    assert other.retry.max_retries == 1
    assert other.retry.backoff.initial == 0.2
    assert other.log.args == "show"
    email = shop_policy.for_task("emails.send_receipt", env="development").policy
    assert email.retry.max_retries == 6  # a glob beats the (overlaid) defaults
    assert email.log.args == "hide"


def test_web_shop_ingest_follows_the_guides_example(shop_policy: celery_policy.Policy) -> None:
    policy = shop_policy.for_task("catalog.ingest").policy
    assert policy.retry.on == ["builtins.TimeoutError", "builtins.ConnectionError"]
    assert policy.retry.never == ["shop.errors.PermanentError"]
    assert policy.retry.max_retries == 8
    assert policy.retry.backoff.jitter == "full"
    assert policy.retry.unknown == "fail"


def test_web_shop_routes_each_family_to_its_queue(shop_policy: celery_policy.Policy) -> None:
    queues = {}
    for name in ("orders.ship", "emails.send_receipt", "reports.daily_sales", "webhooks.deliver", "catalog.ingest"):
        route = shop_policy.for_task(name).policy.route
        queues[name] = route.queue if route else None
    assert queues == {
        "orders.ship": "orders",
        "emails.send_receipt": "emails",
        "reports.daily_sales": "reports",
        "webhooks.deliver": "webhooks",
        "catalog.ingest": None,
    }


def test_demo_policy_retries_fast_with_a_short_soft_limit() -> None:
    policy = _load(DEMO).for_task("catalog.ingest").policy
    assert policy.retry.backoff.initial == 0.2
    assert policy.retry.backoff.jitter == "none"
    assert policy.timeout.soft == 2.0


# --- the README -----------------------------------------------------------------------------------


def _readme_yaml_blocks() -> list[str]:
    readme = REPO_ROOT / "README.md"
    return re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.DOTALL) if readme.exists() else []


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_second() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    first_block = text.split("```console\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == ["./scripts/demo.sh", "./scripts/test.sh"]
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "./scripts/test.sh"
    for script in ("demo.sh", "test.sh", "bootstrap.sh"):
        assert os.access(REPO_ROOT / "scripts" / script, os.X_OK), script


@pytest.mark.parametrize("index", range(len(_readme_yaml_blocks())))
def test_readme_yaml_example_loads(index: int, tmp_path: Path) -> None:
    path = tmp_path / "readme-example.yaml"
    path.write_text(_readme_yaml_blocks()[index])
    policy = _load(path)
    for env in [None, *policy.environments]:
        for name in _sample_task_names(policy.with_env(env)):
            policy.for_task(name, env=env)


# --- the check CLI over the examples --------------------------------------------------------------


def test_check_passes_on_every_example_in_every_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("celery_policy.lint.engine") is None:
        warnings.warn(
            "celery_policy.lint.engine does not exist yet, so `celery-policy check` cannot run: "
            "the examples were only loaded, not linted",
            UserWarning,
            stacklevel=1,
        )
        return
    monkeypatch.chdir(REPO_ROOT)
    files = [str(p.relative_to(REPO_ROOT)) for p in POLICY_FILES]
    for path in files:  # each file on its own: they are independent policies, not layers
        assert cli.main(["check", path, "--all-envs", "--strict"]) == OK, path


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_check_with_the_shop_app_finds_nothing(path: Path) -> None:
    """The CP3xx cross-checks against the real app.

    In a subprocess: ``--app`` imports shop.celery, which installs a policy into process-wide Celery state.
    """
    if importlib.util.find_spec("celery_policy.lint.engine") is None:
        warnings.warn("celery_policy.lint.engine does not exist yet: `check --app` not run", UserWarning, stacklevel=1)
        return
    command = [sys.executable, "-m", "celery_policy.cli", "check", str(path.relative_to(REPO_ROOT))]
    command += ["--all-envs", "--strict", "--app", "shop.celery"]
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:9/0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the shop app boots with the policy and runs under a real worker ------------------------------


def test_shop_app_boots_with_the_web_shop_policy() -> None:
    """Importing shop.celery installs policies/celery-policy.yaml (in a subprocess: it sets process-wide state)."""
    script = """
import json
from shop.celery import app
app.loader.import_default_modules()
app.finalize()
charge = app.tasks["orders.charge"]
report = app.tasks["reports.daily_sales"]
print(json.dumps({
    "tasks": sorted(n for n in app.tasks if not n.startswith("celery.")),
    "prefetch": app.conf.worker_prefetch_multiplier,
    "track_started": app.conf.task_track_started,
    "charge": [charge.acks_late, charge.reject_on_worker_lost, charge.soft_time_limit, charge.time_limit],
    "report": [report.soft_time_limit, report.time_limit],
}))
"""
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:9/0", "CELERY_POLICY_ENV": "production", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    booted = json.loads(done.stdout.strip().splitlines()[-1])
    assert booted["tasks"] == sorted(
        [
            "catalog.ingest",
            "catalog.parse_row",
            "emails.send_password_reset",
            "emails.send_receipt",
            "orders.charge",
            "orders.reserve_stock",
            "orders.ship",
            "reports.daily_sales",
            "webhooks.deliver",
        ]
    )
    assert booted["prefetch"] == 1
    assert booted["track_started"] is True
    assert booted["charge"] == [True, True, 90.0, 120.0]
    assert booted["report"] == [1800.0, 1860.0]


@pytest.fixture
def shop_client(clean_redis: RedisServer) -> Iterator[Celery]:
    app = Celery("shop-client", broker=clean_redis.url, backend=clean_redis.url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    yield app
    app.close()


@pytest.mark.worker
def test_demo_policy_in_a_real_worker_retries_fails_fast_and_returns_errors(
    clean_redis: RedisServer,
    shop_client: Celery,
    celery_worker_process: Callable[..., WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = f"demo-{uuid.uuid4().hex[:8]}"
    worker = celery_worker_process(
        "shop",
        cwd=REPO_ROOT,
        queues=[queue],
        broker_url=clean_redis.url,
        env={"CELERY_POLICY_FILE": str(DEMO), "CELERY_POLICY_ENV": ""},
    )

    def send(name: str, **kwargs: object) -> Any:
        return shop_client.send_task(name, kwargs=kwargs, queue=queue)

    charged = send("orders.charge", order_id="o-1", amount_cents=1250, card_token="tok_ok")
    assert charged.get(timeout=30) == {"order_id": "o-1", "charged_cents": 1250, "charge_id": "ch_o-1"}

    bad_row = send("catalog.parse_row", row="no-price-here")
    assert bad_row.get(timeout=30)["ok"] is False

    declined = send("orders.charge", order_id="o-2", amount_cents=990, card_token="tok_declined")
    with pytest.raises(Exception, match="card declined"):
        declined.get(timeout=30)

    # 3 retries at 0.2 s, 0.4 s, 0.8 s (jitter none), then it gives up.
    slow = send("catalog.ingest", record_id="slow-1")
    with pytest.raises(TimeoutError):
        slow.get(timeout=30)
    log = worker.log_text()
    assert log.count(f"catalog.ingest[{slow.id}] retry") == 3, log[-5000:]

    # Both failures are in the demo's dead-letter stream; the bad row (return_error, dead letters off) is not.
    capsys.readouterr()
    assert cli.main(["dlq", "list", "--url", clean_redis.url, "--file", str(DEMO), "--format", "json"]) == OK
    records = json.loads(capsys.readouterr().out)["records"]
    assert [(r["task"], r["reason"], r["attempts"]) for r in records] == [
        ("orders.charge", "permanent", 1),
        ("catalog.ingest", "exhausted", 4),
    ]
    assert records[0]["kwargs"]["card_token"] == "***"  # log.redact_keys reach the dead letters too
