"""The worker's Prometheus endpoint: a real prefork worker, scraped over HTTP after real decisions.

The counters are written by the pool processes (multiprocess files) and summed by
the endpoint in the worker's main process; each poison-pill run kills its pool
process, so the counts also survive the process that made them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import port_for
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from support.harness import DEADLETTER_POLICY, DL_STREAM, deadletter_worker, new_key, producer, wait_final, wait_record
from support.servers import RedisServer, WorkerProcess, running, wait_for

from celery_policy.deadletter.replay import celery_publisher, replay
from celery_policy.deadletter.store import Filter, RedisStreamStore
from celery_policy.metrics import decision_counts
from celery_policy.runtime.decision import Decision

pytestmark = pytest.mark.worker

EXC = "tests.support.apps.deadletter.dlapp."


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=5).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def policy_samples(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, dict[str, float]]:
    """celery_policy_* samples as {name: {"k=v,k=v": value}} for readable comparisons."""
    found: dict[str, dict[str, float]] = {}
    for (name, labels), value in samples.items():
        if name.startswith("celery_policy_") and not name.endswith("_created"):
            found.setdefault(name, {})[",".join(f"{k}={v}" for k, v in labels)] = value
    return found


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return int(port_for.select_random())


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Path:
    path = tmp_path_factory.mktemp("prom") / "policy.yaml"
    path.write_text(
        DEADLETTER_POLICY.read_text()
        + f"\nobservability:\n  prometheus: {{port: {metrics_port}, address: 127.0.0.1}}\n"
    )
    return path


@pytest.fixture(scope="module")
def worker(
    redis_server: RedisServer,
    policy_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    broker = redis_server.url_for(7)
    redis_server.client(7).flushdb()
    process = deadletter_worker(
        tmp_path_factory.mktemp("prom-logs"), broker_url=broker, policy=policy_file, pool="prefork", concurrency=2
    )
    with running(process, request.session) as started:
        yield started


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> Celery:
    return producer(redis_server.url_for(7))


def test_a_prefork_worker_serves_each_decision_counter_with_its_labels(
    worker: WorkerProcess, app: Celery, redis_server: RedisServer, metrics_port: int, policy_file: Path
) -> None:
    client: redis.Redis = redis_server.client(7)
    store = RedisStreamStore(redis_server.url_for(7), DL_STREAM)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    worker.wait_for_log("prometheus_endpoint")

    before = policy_samples(scrape(url))
    assert "celery_policy_retries_total" not in before  # no decision yet: no series
    (info_labels,) = before["celery_policy_info"]
    assert before["celery_policy_info"][info_labels] == 1.0
    assert re.fullmatch(r"env=,fingerprint=sha256:[0-9a-f]{64},version=\d+\.\d+\.\d+\S*", info_labels), info_labels

    transient = app.send_task("dl.transient", args=(new_key("t"),)).id  # 2 retries, then dead letter
    permanent = app.send_task("dl.permanent", args=(new_key("p"),)).id  # dead letter at once
    unknown = app.send_task("dl.unknown", args=(new_key("u"),)).id  # 1 retry (retry.unknown), then exhausted
    nodl = app.send_task("dl.nodl", args=(new_key("n"),)).id  # fails, no dead letter
    crash = app.send_task("dl.crash", args=(new_key("c"),)).id  # kills its process 3 times, then the cap
    once_key = new_key("o")
    once = app.send_task("dl.once", args=(once_key, 21)).id  # permanent on its first run: replayed below
    for task_id in (transient, permanent, unknown, once):
        wait_record(store, task_id, timeout=30)
    wait_record(store, crash, timeout=60)
    wait_final(client, nodl)

    # the replay of dl.once succeeds: a success moves no counter
    (record,) = list(store.iter(Filter(task="dl.once")))
    report = replay(store, [record], celery_publisher(app))
    (_, new_id) = report.replayed[0]
    assert app.AsyncResult(new_id).get(timeout=20) == 42

    def settled() -> dict[str, dict[str, float]] | None:
        found = policy_samples(scrape(url))
        failures = found.get("celery_policy_failures_total", {})
        return found if sum(failures.values()) >= 6 else None

    found = wait_for("six final failures on the endpoint", settled, timeout=20)
    time.sleep(0.5)  # nothing else moves afterwards
    found = policy_samples(scrape(url))
    assert found["celery_policy_retries_total"] == {
        f"exception={EXC}Transient,rule=retry.on,task=dl.transient": 2.0,
        f"exception={EXC}Flaky,rule=retry.unknown,task=dl.unknown": 1.0,
    }
    assert found["celery_policy_failures_total"] == {
        f"exception={EXC}Transient,reason=exhausted,task=dl.transient": 1.0,
        f"exception={EXC}Permanent,reason=permanent,task=dl.permanent": 1.0,
        f"exception={EXC}Flaky,reason=unknown_exhausted,task=dl.unknown": 1.0,
        f"exception={EXC}Permanent,reason=permanent,task=dl.nodl": 1.0,
        "exception=builtins.RuntimeError,reason=redelivery_limit,task=dl.crash": 1.0,
        f"exception={EXC}Permanent,reason=permanent,task=dl.once": 1.0,
    }
    assert found["celery_policy_dead_lettered_total"] == {
        f"exception={EXC}Transient,reason=exhausted,task=dl.transient": 1.0,
        f"exception={EXC}Permanent,reason=permanent,task=dl.permanent": 1.0,
        f"exception={EXC}Flaky,reason=unknown_exhausted,task=dl.unknown": 1.0,
        "exception=builtins.RuntimeError,reason=redelivery_limit,task=dl.crash": 1.0,
        f"exception={EXC}Permanent,reason=permanent,task=dl.once": 1.0,
    }
    assert found["celery_policy_redelivery_capped_total"] == {"task=dl.crash": 1.0}
    assert found["celery_policy_info"] == before["celery_policy_info"]
    assert len(worker.children()) == 2  # the crashes replaced pool processes; their counts stayed


def test_the_endpoint_is_off_without_observability_prometheus() -> None:
    """The default policy starts nothing: a decision moves no counter and no sink is added."""
    from celery_policy.model import PolicyDocument

    assert PolicyDocument(version=1).observability.prometheus is None


@pytest.mark.parametrize(
    ("action", "reason", "rule", "expected"),
    [
        ("retry", None, "retry.rules[0]", [("celery_policy_retries", ("t", "E", "retry.rules[0]"))]),
        ("fail", "permanent", "retry.never", [("celery_policy_failures", ("t", "E", "permanent"))]),
        (
            "dead_letter",
            "redelivery_limit",
            "ack.max_redeliveries",
            [
                ("celery_policy_failures", ("t", "E", "redelivery_limit")),
                ("celery_policy_dead_lettered", ("t", "E", "redelivery_limit")),
                ("celery_policy_redelivery_capped", ("t",)),
            ],
        ),
        ("requeue", "time_limit", "timeout.hard", []),
    ],
)
def test_each_decision_moves_its_counters(
    action: str, reason: str | None, rule: str, expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    decision = Decision(action, "t", "id", 1, 3, None, "E", reason, "builtin", rule)
    assert [(spec.name, labels) for spec, labels in decision_counts(decision)] == expected


def test_check_points_at_a_bad_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from celery_policy.cli import main

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nobservability:\n  prometheus: {port: 70000}\n")
    assert main(["check", str(policy)]) == 1
    assert (
        f"{policy}:3:22: CP101 error: input should be less than or equal to 65535, got 70000" in capsys.readouterr().out
    )


def test_install_stops_with_the_fix_when_prometheus_client_is_missing(tmp_path: Path) -> None:
    """A policy that asks for metrics on a machine without the extra: PolicyError at install, naming the extra."""
    import subprocess
    import sys

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nobservability:\n  prometheus: {port: 9808}\n")
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # makes `import prometheus_client` fail
        "from celery import Celery; import celery_policy\n"
        "app = Celery('x', broker='memory://')\n"
        "try:\n"
        f"    celery_policy.install(app, {str(policy)!r})\n"
        "except celery_policy.PolicyError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "observability.prometheus is set but prometheus_client is not installed; run: pip install " in done.stdout
    assert f"'celery-policy[metrics]' ({policy}:3:15)" in done.stdout
