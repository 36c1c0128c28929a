"""`celery-policy status` against real prefork workers with different hostnames on one broker.

The workers read the deployed file ``deploy/policy.yaml`` (a copy of
tests/support/apps/fleet/policy_v1.yaml, the reviewed release). The test then deploys
policy_v2.yaml over it and restarts one worker only: ``status --expect`` must
name exactly that worker and the fields that differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import celery
import pytest

from celery_policy.cli import main
from celery_policy.cli.exit import CONNECT, FAILED, OK
from celery_policy.fleet import short, snapshot
from celery_policy.resolve import load

CELERY_VERSION = tuple(int(part) for part in celery.__version__.split(".")[:2])

pytestmark = pytest.mark.worker

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "tests" / "support" / "apps" / "fleet"
V1 = FLEET / "policy_v1.yaml"
V2 = FLEET / "policy_v2.yaml"
APP = "tests.support.apps.fleet.fleetapp"
HOSTS = ["alpha@fleet", "beta@fleet", "gamma@fleet"]
TASKS = ["fleet.add", "fleet.charge", "fleet.fail"]
# How long status collects replies. Every worker answers from its main process within milliseconds
# on an idle machine; on a loaded 2-core one (three prefork workers, a benchmark next to them) a reply
# has been seen to take over a second. The window changes no outcome the tests check, only how long
# a missing worker is waited for, so it is wide.
REPLY_WINDOW_S = "5"


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["status", "--app", APP, "--timeout", REPLY_WINDOW_S, *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


@pytest.fixture
def deployed(clean_redis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(V1, deploy / "policy.yaml")
    env = {
        "CELERY_BROKER_URL": clean_redis.url,
        "CELERY_POLICY_FILE": str(deploy / "policy.yaml"),
        "CELERY_POLICY_ENV": "production",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    _forget_app()  # other tests imported the app against another broker
    return env


def _forget_app() -> None:
    """Import the app afresh next time (celery's find_app also looks it up as an attribute of its package)."""
    sys.modules.pop(APP, None)
    package = sys.modules.get("tests.support.apps.fleet")
    if package is not None and hasattr(package, "fleetapp"):
        delattr(package, "fleetapp")


def _inspect_policy_info(deployed: dict[str, str], fingerprint: str) -> None:
    """Celery's own inspect command reaches the policy_info remote-control command (Celery 5.4+; 5.3's command
    line accepts only its built-in inspect commands, which the README says)."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "inspect", "policy_info", "--json", "--timeout", REPLY_WINDOW_S],
        cwd=ROOT, env={**os.environ, **deployed}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if CELERY_VERSION < (5, 4):
        assert done.returncode != 0
        assert "'policy_info' is not one of" in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        replies = json.loads(done.stdout[done.stdout.index("{") :])
        assert sorted(replies) == sorted(HOSTS)
        assert {reply["fingerprint"] for reply in replies.values()} == {fingerprint}
        assert {reply["env"] for reply in replies.values()} == {"production"}


def test_status_sees_every_worker_and_expect_names_the_one_that_drifts(
    deployed: dict[str, str], celery_worker_process: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [
        celery_worker_process(APP, pool="prefork", hostname=host, cwd=ROOT, env=deployed, start=False) for host in HOSTS
    ]
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(lambda worker: worker.start(), workers))
    v1 = snapshot(load(V1, env="production", check_imports=False), TASKS).fingerprint
    v2 = snapshot(load(V2, env="production", check_imports=False), TASKS).fingerprint

    # every worker logged the fingerprint it booted with
    for worker in workers:
        assert worker.wait_for_log(r"policy_loaded")[0].count(v1) == 1

    _inspect_policy_info(deployed, v1)

    code, out = _status(capsys)
    assert code == OK
    assert out.startswith("3 workers, 1 policy\n\n")
    assert f"policy {short(v1)}  env production  3 workers\n" in out
    for host in HOSTS:
        assert re.search(rf"^  {re.escape(host)} +loaded \S+Z  celery-policy \S+  \S*policy\.yaml sha256:", out, re.M)

    code, out = _status(capsys, "--expect", str(V1), "--env", "production")
    assert code == OK
    assert out.endswith("all 3 workers run the expected policy\n")

    # deploy the next release, restart only gamma
    shutil.copy(V2, Path(deployed["CELERY_POLICY_FILE"]))
    workers[2].stop()
    celery_worker_process(APP, pool="prefork", hostname="gamma@fleet", cwd=ROOT, env=deployed)

    code, out = _status(capsys)
    assert code == OK  # without --expect, two policies are a report, not a failure
    assert out.startswith("3 workers, 2 policies\n")
    groups = re.findall(r"^policy (\w+)  env production  (\d) workers?", out, re.M)
    assert groups == [(short(v1), "2"), (short(v2), "1")]

    code, out = _status(capsys, "--expect", str(V1), "--env", "production")
    assert code == FAILED
    drift = out[out.index("drift: ") :]
    assert drift == (
        f"drift: gamma@fleet runs {short(v2)}, expected {short(v1)} (expected → running)\n"
        "  task fleet.add\n"
        f"    timeout.hard: 15s → 25s  ({V1}:17 → {deployed['CELERY_POLICY_FILE']}:18)\n"
        f"    timeout.soft: 10s → 20s  ({V1}:17 → {deployed['CELERY_POLICY_FILE']}:18)\n"
        "  task fleet.charge\n"
        f"    retry.max_retries: 3 → 5  ({V1}:5 → {deployed['CELERY_POLICY_FILE']}:12)\n"
        "\n"
        "1 of 3 workers drift from the expected policy: gamma@fleet\n"
    )

    code, out = _status(capsys, "--expect", str(V1), "--env", "production", "--format", "json")
    assert code == FAILED
    report = json.loads(out)
    assert report["drift"] == ["gamma@fleet"]
    assert [group["workers"] for group in report["groups"]] == [["alpha@fleet", "beta@fleet"], ["gamma@fleet"]]
    by_host = {worker["hostname"]: worker for worker in report["workers"]}
    assert {host: w["fingerprint"] for host, w in by_host.items()} == {
        "alpha@fleet": v1,
        "beta@fleet": v1,
        "gamma@fleet": v2,
    }
    assert [(c["section"], c["field"], c["old"], c["new"]) for c in by_host["gamma@fleet"]["changes"]] == [
        ("task:fleet.add", "timeout.hard", 15.0, 25.0),
        ("task:fleet.add", "timeout.soft", 10.0, 20.0),
        ("task:fleet.charge", "retry.max_retries", 3, 5),
    ]
    assert by_host["alpha@fleet"]["changes"] == []
    assert by_host["alpha@fleet"]["drift"] is False

    # the new release is what gamma runs: against it, alpha and beta drift
    code, out = _status(capsys, "--expect", str(V2), "--env", "production", "--format", "json")
    assert code == FAILED
    assert json.loads(out)["drift"] == ["alpha@fleet", "beta@fleet"]

    # the same through Celery's own CLI: `celery -A app policy status` (the environment comes from the app)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "policy", "status", "--expect", str(V2), "--format", "json"],
        cwd=ROOT, env={**os.environ, **deployed}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == FAILED, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{") :])["drift"] == ["alpha@fleet", "beta@fleet"]


def test_status_with_no_worker_exits_1(deployed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--app", APP, "--timeout", "0.3"])
    assert code == FAILED
    assert capsys.readouterr().out == "no worker replied within 0.3s\n"


def test_status_with_the_broker_down_exits_3(
    deployed: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    _forget_app()
    code = main(["status", "--app", APP, "--timeout", "0.3"])
    assert code == CONNECT
    assert (
        "celery-policy status: error: cannot reach the broker of 'tests.support.apps.fleet.fleetapp'"
        in capsys.readouterr().err
    )
