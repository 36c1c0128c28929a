"""The chaos driver: real broker and evidence redis-servers, real prefork workers, random faults.

It publishes a mix of tasks (tests/support/apps/chaos/chaosapp.py), then, until every
task is accounted for, SIGKILLs pool children and main worker processes at
random moments (a killed worker is replaced by a new one), restarts the
broker (AOF on, appendfsync always; SIGKILL then start), and at the end
counts, per task:
- succeeded: its side effect is on the evidence Redis (``fx:k``),
- dead-lettered: a record with its task id is in the dead-letter stream (on the evidence Redis),
- pending: still in a queue list or in ``unacked`` (plain kombu strands a killed worker's
  messages there until the visibility timeout),
- overran: a ``chaos.slow`` run that returned (``overran:k``): its soft time limit was not raised,
  so it succeeded, was acked and left no dead letter; not lost, but the limit did not hold
  (the pool process's backstop, celery_policy/runtime/soft_limit.py, is there so that it does),
- lost: none of these.
The same seed gives the same tasks and the same fault schedule.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.servers import RedisServer, WorkerProcess  # noqa: E402

APPS = TESTS / "support" / "apps" / "chaos"
STREAM = "chaos:dead"
FAULT_WAIT_S = 10.0  # how long a fault waits for work in flight before it lands anyway
FAST_LIVENESS = {"reliable_heartbeat_interval": 0.5, "reliable_heartbeat_ttl": 3.0, "reliable_recover_interval": 1.0}

POLICY = """
version: 1
errors:
  transient: [builtins.ConnectionError]
  permanent: [builtins.ValueError]
defaults:
  retry: {{on: [transient], never: [permanent], unknown: fail, max_retries: 5,
          backoff: {{initial: 100ms, factor: 2, max: 1s, jitter: full}}}}
  timeout: {{soft: 1s, hard: 5s}}
  ack: {{late: true, reject_on_worker_lost: true, max_redeliveries: {max_redeliveries}}}
  dead_letter: {{enabled: true}}
tasks:
  chaos.ok: {{idempotency: {{key: "ok:{{args[0]}}", ttl: 1h}}}}
  chaos.flaky: {{idempotency: {{key: "flaky:{{args[0]}}", ttl: 1h}}}}
  chaos.later:
    idempotency: {{key: "later:{{args[0]}}", ttl: 1h}}
    retry:
      max_retries: 2
      backoff: {{initial: {later_backoff_s}s, factor: 1, max: {later_backoff_s}s, jitter: none}}
  chaos.slow:
    retry: {{on: [celery.exceptions.SoftTimeLimitExceeded], max_retries: 1,
            backoff: {{initial: 0, factor: 1, max: 0, jitter: none}}}}
worker: {{prefetch_multiplier: 1, reliable_fetch: {reliable}}}
dead_letter_store: {{url: "{evidence}", stream: "{stream}"}}
"""


@dataclass
class ChaosConfig:
    tasks: int = 1000
    seed: int = 1
    # "chaos": the whole mix; "ok": only succeeding tasks (the fetch-window loss experiment);
    # "slow": a quarter soft-time-limit tasks (retried at once, then dead-lettered), the rest succeeding
    mix: str = "chaos"
    reliable: bool = True
    workers: int = 2
    concurrency: int = 2
    main_kills: int = 3
    child_kills: int = 3
    restarts: int = 1
    interval_s: tuple[float, float] = (0.5, 2.0)
    max_redeliveries: int = 3
    deadline_s: float = 240.0
    settle_s: float = 8.0  # no progress for this long with nothing left to do: stop
    later_backoff_s: float = 6.0  # chaos.later: one retry after this long (waits in the delayed set)


@dataclass
class ChaosReport:
    config: ChaosConfig
    kinds: dict[str, int] = field(default_factory=dict)
    main_kills: int = 0
    child_kills: int = 0
    restarts: int = 0
    succeeded: int = 0
    dead_lettered: int = 0
    pending: int = 0
    lost: int = 0
    lost_ids: list[int] = field(default_factory=list)
    # chaos.slow keys whose body ran to its end (its soft time limit was not raised in time) and that
    # were neither dead-lettered nor are pending: they succeeded, which their policy says cannot happen
    overran_ids: list[int] = field(default_factory=list)
    duplicate_effects: int = 0
    duplicate_kinds: dict[int, str] = field(default_factory=dict)  # key -> task kind, for each duplicated effect
    # Of those, the duplicates whose earlier effect was applied by a process the driver SIGKILLed afterwards
    # (key -> seconds from that effect to the kill): killed after the side effect and before the idempotency
    # key stored the result, so the redelivery ran the body again. That is at-least-once delivery, which no
    # guard can close for a side effect outside its store; any other duplicate is a defect.
    duplicates_after_kill: dict[int, float] = field(default_factory=dict)
    permanent_dead_letters: dict[int, int] = field(default_factory=dict)
    poison_runs: dict[int, int] = field(default_factory=dict)
    poison_dead_letters: dict[int, int] = field(default_factory=dict)
    unexpected_dead_letters: int = 0
    unexpected_dead_letter_ids: list[int] = field(default_factory=list)
    # Per fault, how many messages the broker held unacknowledged (taken by a worker, not yet
    # acked) just before it: a fault with 0 hit an idle fleet and tested nothing; -1: the broker
    # did not answer (still restarting or loading its AOF), so no worker could hold anything either.
    in_flight_at_fault: list[tuple[str, int]] = field(default_factory=list)
    early_retries: list[int] = field(default_factory=list)  # chaos.later keys retried before their backoff
    seconds: float = 0.0
    worker_exits: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "fetch": "reliable" if self.config.reliable else "plain kombu",
            "seed": self.config.seed,
            "tasks": self.config.tasks,
            "main kills": self.main_kills,
            "child kills": self.child_kills,
            "broker restarts": self.restarts,
            "succeeded": self.succeeded,
            "dead-lettered": self.dead_lettered,
            "pending": self.pending,
            "lost": self.lost,
            "duplicate effects": self.duplicate_effects,
            "of them killed after the effect": len(self.duplicates_after_kill),
            "seconds": round(self.seconds),
        }


def plan_tasks(config: ChaosConfig) -> list[tuple[str, list[Any]]]:
    """The tasks to publish, index = business key, shuffled by the seed."""
    rng = random.Random(config.seed)
    n = config.tasks
    if config.mix == "ok":
        return [("chaos.ok", [i]) for i in range(n)]
    if config.mix == "slow":
        slow = ["chaos.slow"] * max(2, n // 4)
        kinds = slow + ["chaos.ok"] * (n - len(slow))
        rng.shuffle(kinds)
        return [(kind, [i]) for i, kind in enumerate(kinds)]
    kinds = (
        ["chaos.poison"] * max(2, n // 250)
        + ["chaos.slow"] * max(2, n // 250)
        + ["chaos.permanent"] * max(2, n // 20)
        + ["chaos.flaky"] * max(2, n // 10)
        + ["chaos.later"] * max(2, n // 20)
    )
    kinds += ["chaos.ok"] * (n - len(kinds))
    rng.shuffle(kinds)
    plan: list[tuple[str, list[Any]]] = []
    for i, kind in enumerate(kinds):
        plan.append((kind, [i, rng.randint(1, 2)] if kind == "chaos.flaky" else [i]))
    return plan


def _dead_letters(evidence: Any) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _id, fields in evidence.xrange(STREAM):
        record = json.loads(next(iter(fields.values())))
        task_id = str(record.get("task_id") or "")
        if task_id.startswith("chaos-"):
            key = int(task_id.split("-", 1)[1])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _pending_ids(broker: Any, *, unacked: bool = True) -> set[int]:
    """Indexes of tasks still in a queue list or (with ``unacked``) in ``unacked``."""
    payloads: list[dict[str, Any]] = []
    for key in broker.scan_iter(match="celery*", count=1000):
        if broker.type(key) == b"list":
            payloads += [json.loads(raw) for raw in broker.lrange(key, 0, -1)]
    if unacked:
        payloads += [json.loads(entry)[0] for entry in broker.hvals("unacked")]
    for key in broker.scan_iter(match="celery-policy:delayed:*", count=1000):  # delayed delivery: due later
        payloads += [json.loads(m.split(b"\n", 1)[1]) for m in broker.zrange(key, 0, -1)]
    ids: set[int] = set()
    for payload in payloads:
        task_id = str(payload.get("headers", {}).get("id") or "")
        if task_id.startswith("chaos-"):
            ids.add(int(task_id.split("-", 1)[1]))
    return ids


class ChaosRun:
    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed * 7919)
        self.broker_server = RedisServer(workdir / "broker", appendonly=True)
        self.evidence_server = RedisServer(workdir / "evidence")
        self.workers: list[WorkerProcess] = []
        self.started = 0
        self.report = ChaosReport(config)
        self._client: Any = None
        self.killed: dict[int, float] = {}  # pid -> epoch seconds of its SIGKILL (pool children and main processes)
        self.liveness = dict(FAST_LIVENESS)  # reliable fetch's heartbeat and recovery, for the workers started next

    def _worker(self) -> WorkerProcess:
        self.started += 1
        options = self.liveness | {"visibility_timeout": 3600}
        worker = WorkerProcess(
            "chaosapp",
            log_path=self.workdir / f"worker-{self.started}.log",
            pool="prefork",
            concurrency=self.config.concurrency,
            hostname=f"chaos{self.started}@localhost",
            cwd=APPS,
            env={
                "CELERY_BROKER_URL": self.broker_server.url,
                "CHAOS_EVIDENCE_URL": self.evidence_server.url,
                "CELERY_POLICY_FILE": str(self.workdir / "policy.yaml"),
                "CHAOS_TRANSPORT_OPTIONS": json.dumps(options),
            },
            ready_timeout=90,
        )
        return worker.start()

    def run(self) -> ChaosReport:
        config = self.config
        t0 = time.monotonic()
        self.broker_server.start()
        self.evidence_server.start()
        evidence = self.evidence_server.client()
        (self.workdir / "policy.yaml").write_text(
            POLICY.format(
                max_redeliveries=config.max_redeliveries,
                reliable="true" if config.reliable else "false",
                evidence=self.evidence_server.url,
                stream=STREAM,
                later_backoff_s=config.later_backoff_s,
            )
        )
        try:
            plan = plan_tasks(config)
            for kind, _ in plan:
                self.report.kinds[kind] = self.report.kinds.get(kind, 0) + 1
            self.workers = [self._worker() for _ in range(config.workers)]
            self._publish(plan)
            self._chaos(plan, evidence, t0)
            self._tally(plan, evidence)
        finally:
            for worker in self.workers:
                worker.kill()
            self.broker_server.close()
            self.evidence_server.close()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _publish(self, plan: list[tuple[str, list[Any]]]) -> None:
        # A plain Celery producer (plain kombu): reliable fetch needs nothing from producers.
        producer_app = Celery("chaos-producer", broker=self.broker_server.url)
        with producer_app.producer_or_acquire() as producer:
            for i, (name, args) in enumerate(plan):
                producer_app.send_task(name, args=args, task_id=f"chaos-{i}", producer=producer)

    def _actions(self) -> list[str]:
        c = self.config
        actions = ["main"] * c.main_kills + ["child"] * c.child_kills + ["restart"] * c.restarts
        self.rng.shuffle(actions)
        return actions

    def _chaos(self, plan: list[tuple[str, list[Any]]], evidence: Any, t0: float) -> None:
        actions = self._actions()
        self._retry: list[str] = []
        # Fault k lands after its random interval, or at the latest once (k + 1) / (n + 1) of the tasks are
        # accounted for, so the last faults still find work in flight on a fast (or slow) machine.
        faults = len(actions)
        gates = [len(plan) * (k + 1) // (faults + 1) for k in range(faults)]
        next_at = time.monotonic() + self.rng.uniform(*self.config.interval_s)
        last_progress, last_done = time.monotonic(), -1
        while time.monotonic() - t0 < self.config.deadline_s:
            now = time.monotonic()
            gate = gates[faults - len(actions)] if actions else len(plan)
            if self._retry:
                self._fault(self._retry.pop(0))
            elif actions and (now >= next_at or last_done >= gate):
                self._fault(actions.pop(0))
                next_at = time.monotonic() + self.rng.uniform(*self.config.interval_s)
            for index, worker in enumerate(self.workers):
                if not worker.alive:  # a worker that exited on its own (e.g. on a broker restart)
                    self.report.worker_exits.append(f"{worker.hostname} exited {worker.returncode}")
                    worker.kill()
                    self.workers[index] = self._worker()
            done = self._accounted(plan, evidence)
            if done != last_done:
                last_progress, last_done = now, done
            if (
                not actions
                and not self._retry
                and (done == len(plan) or (now - last_progress > self.config.settle_s and self._idle()))
            ):
                return
            time.sleep(0.2)

    def _idle(self) -> bool:
        """Nothing left that will still run: no queued message, and with reliable fetch nothing in ``unacked``
        (plain kombu strands a killed worker's messages there until the visibility timeout, 1 h)."""
        try:
            return not _pending_ids(self.broker_server.client(), unacked=self.config.reliable)
        except Exception:  # the broker is restarting: not idle
            return False

    def _broker_client(self) -> Any:
        # One client for the whole run (a restart drops its pooled sockets; the next command reconnects).
        if self._client is None:
            self._client = self.broker_server.client()
        return self._client

    def _in_flight(self) -> int:
        try:
            return int(self._broker_client().hlen("unacked"))
        except Exception:  # the broker is restarting or loading its AOF
            return -1

    def _fault(self, action: str) -> None:
        # Land each fault while a worker holds work: wait (bounded) until a message is taken and not
        # yet acked. A fault that still finds nothing is recorded with 0 (or -1) and reported.
        deadline = time.monotonic() + FAULT_WAIT_S
        while (in_flight := self._in_flight()) <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if action == "restart":
            self.report.in_flight_at_fault.append((action, in_flight))
            self.broker_server.restart(hard=True)
            self.report.restarts += 1
            return
        if action == "child":
            # A pool child of some worker (a worker replaced a moment ago may not have forked yet):
            # a kill that finds no child is retried on the next tick, never silently skipped.
            candidates = [(w, c) for w in self.workers for c in w.children()]
            if not candidates:
                self._retry.append(action)
                return
            self.report.in_flight_at_fault.append((action, in_flight))
            _worker, child = self.rng.choice(candidates)
            os.kill(child, signal.SIGKILL)
            self.killed[child] = time.time()
            self.report.child_kills += 1
            return
        self.report.in_flight_at_fault.append((action, in_flight))
        worker = self.rng.choice(self.workers)
        index = self.workers.index(worker)
        pids = [worker.pid, *worker.children()] if worker.alive else []
        worker.kill()  # SIGKILL: the main process and its pool children
        self.killed.update(dict.fromkeys(pids, time.time()))
        self.report.main_kills += 1
        self.workers[index] = self._worker()

    def _accounted(self, plan: list[tuple[str, list[Any]]], evidence: Any) -> int:
        """Distinct tasks with a side effect or a dead letter (-1 when the evidence Redis does not answer)."""
        try:
            keys = {int(k.split(b":", 1)[1]) for k in evidence.scan_iter(match="fx:*", count=5000)}
            keys.update(_dead_letters(evidence))
        except Exception:
            return -1
        return len(keys)

    def _tally(self, plan: list[tuple[str, list[Any]]], evidence: Any) -> None:
        report = self.report
        dead = _dead_letters(evidence)
        try:
            pending = _pending_ids(self.broker_server.client())
        except Exception:
            pending = set()
        for i, (kind, _args) in enumerate(plan):
            effects = int(evidence.get(f"fx:{i}") or 0)
            runs = int(evidence.get(f"runs:{i}") or 0)
            dl = dead.get(i, 0)
            if effects > 1:
                report.duplicate_effects += effects - 1
                report.duplicate_kinds[i] = kind
                gap = self._killed_after_effect(evidence, i)
                if gap is not None:
                    report.duplicates_after_kill[i] = gap
            if effects:
                report.succeeded += 1
            elif dl:
                report.dead_lettered += 1
            elif i in pending:
                report.pending += 1
            elif kind == "chaos.slow" and int(evidence.get(f"overran:{i}") or 0):
                report.overran_ids.append(i)
            else:
                report.lost += 1
                report.lost_ids.append(i)
            if kind == "chaos.permanent":
                report.permanent_dead_letters[i] = dl
            elif kind == "chaos.poison":
                report.poison_runs[i] = runs
                report.poison_dead_letters[i] = dl
            elif kind in ("chaos.ok", "chaos.flaky", "chaos.later") and dl:
                report.unexpected_dead_letters += 1
                report.unexpected_dead_letter_ids.append(i)
            if kind == "chaos.later":
                times = [float(t) for t in evidence.lrange(f"late:{i}", 0, -1)]
                # a run after the first is a retry only if it came a backoff later (a redelivery may come sooner)
                if effects and max(times) - min(times) < self.config.later_backoff_s:
                    report.early_retries.append(i)

    def _killed_after_effect(self, evidence: Any, key: int) -> float | None:
        """Seconds from the first effect of ``key`` to the SIGKILL of the process that applied it, if there was one.

        Every effect but the last must come from a process killed after it: one killed run, one redelivery.
        """
        gaps = []
        for entry in evidence.lrange(f"fxby:{key}", 0, -2):
            pid_text, _, at_text = entry.decode().partition(" ")
            killed_at = self.killed.get(int(pid_text))
            if killed_at is None or killed_at < float(at_text):
                return None
            gaps.append(killed_at - float(at_text))
        return round(max(gaps), 3) if gaps else None


def format_table(reports: list[ChaosReport]) -> str:
    rows = [r.row() for r in reports]
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])
