"""The celery-policy demo: a real worker of the `shop` app under policies/demo.yaml.

It starts a private redis-server and a prefork worker, then shows what the
policy file does with no retry code in the tasks:
1. a transient error retried with backoff, then dead-lettered when retries run out;
2. a permanent error dead-lettered at once;
3. a soft time limit: the report is retried once, then dead-lettered;
4. `celery-policy dlq list`, then `dlq replay` once the outage is over;
5. the web console (`celery-policy web`) on the same store, with a fresh operator token:
   its URL and token are printed; at a terminal it runs until Enter is pressed.

Run it with ./scripts/demo.sh (which sets up .venv and redis-server first).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "demo.yaml"
QUEUES = "celery,orders,emails,reports,webhooks"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server is missing: run ./scripts/bootstrap.sh (as root it installs it) or apt-get install redis-server"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    sys.exit("redis-server did not start")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "shop", "worker", "--pool", "prefork", "--concurrency", "2",
        "--queues", QUEUES, "--loglevel", "INFO", "--hostname", "demo@localhost",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    handle = open(log, "ab")  # noqa: SIM115 - the worker writes to it until the demo ends
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if " ready." in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            print(log.read_text(errors="replace")[-4000:])
            sys.exit("the worker exited before it was ready (its log is above)")
        time.sleep(0.1)
    sys.exit("the worker was not ready within 60s")


_DECISION = re.compile(r"policy_decision\s+(.*)$")
_FIELDS = ("decision", "attempt", "countdown", "exc_type", "reason", "policy_source")


def decisions(log: Path, task_id: str) -> list[str]:
    """The worker's policy_decision events for one task, shortened to the interesting fields."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        match = _DECISION.search(line)
        if match and task_id in line:
            fields = dict(re.findall(r"(\w+)=('[^']*'|\S+)", match.group(1)))
            lines.append("  " + " ".join(f"{k}={fields[k]}" for k in _FIELDS if k in fields))
    return lines


def wait_state(result: object, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(result.state)  # type: ignore[attr-defined]
        if state in {"SUCCESS", "FAILURE"}:
            return state
        time.sleep(0.1)
    return str(result.state)  # type: ignore[attr-defined]


def cli(*args: str, env: dict[str, str]) -> str:
    command = [str(ROOT / ".venv" / "bin" / "celery-policy"), *args]
    print("$ celery-policy " + " ".join(args), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).rstrip()
    print(output, flush=True)
    return output


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process group we started (TERM, then KILL after 15 s)."""
    if process is None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def start_console(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    """`celery-policy web --app shop.celery` with a fresh operator token; prints its URL and the token."""
    import secrets
    import urllib.request

    token = secrets.token_hex(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    say("6. the web console on the same store: dead letters grouped, replay and purge, policies, the fleet")
    console_env = dict(env, CELERY_POLICY_WEB_TOKEN=token)
    command = [
        str(ROOT / ".venv" / "bin" / "celery-policy"),
        "web",
        "--app",
        "shop.celery",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    print("$ CELERY_POLICY_WEB_TOKEN=... celery-policy web --app shop.celery --bind " + f"127.0.0.1:{port}", flush=True)
    log = (tmp / "console.log").open("wb")
    console = subprocess.Popen(
        command, cwd=ROOT, env=console_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    request = urllib.request.Request(url + "/dead-letters", headers={"Authorization": f"Bearer {token}"})
    for _ in range(200):
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                status = answer.status
            break
        except OSError:
            time.sleep(0.1)
    else:
        print((tmp / "console.log").read_text(errors="replace")[-3000:])
        raise SystemExit("the web console did not start")
    print(f"console: {url}/dead-letters (HTTP {status})")
    print(f"token:   {token}   (log in with it; API clients send 'Authorization: Bearer <token>')")
    if sys.stdin.isatty():
        input("the console runs until you press Enter ")
    return console


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="celery-policy-demo-"))
    redis_proc, url = start_redis(tmp)
    env = dict(os.environ, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, CELERY_POLICY_FILE=str(POLICY))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    os.environ.update(env)
    log = tmp / "worker.log"
    worker = None
    console = None
    try:
        say(f"policy {POLICY.relative_to(ROOT)}: checked like CI does")
        cli("check", str(POLICY.relative_to(ROOT)), "--app", "shop.celery", env=env)
        say(f"a prefork worker of the shop app on a private redis-server ({url}); log: {log}")
        worker = start_worker(env, log)
        sys.path.insert(0, str(ROOT))
        from shop import tasks
        from shop.outages import set_down

        say("1. transient error: the supplier feed is down; catalog.ingest retries with backoff (0.2s, 0.4s, 0.8s)")
        set_down("supplier-feed", True)
        ingest = tasks.ingest.apply_async(kwargs={"record_id": "sku-1001"})
        print(f"catalog.ingest[{ingest.id}] -> {wait_state(ingest)}")
        print("\n".join(decisions(log, ingest.id)))

        say("2. permanent error: a declined card is not retried; it is dead-lettered at once")
        charge = tasks.charge.apply_async(
            kwargs={"order_id": "o-7", "amount_cents": 1999, "card_token": "tok_declined"}
        )
        print(f"orders.charge[{charge.id}] -> {wait_state(charge)}")
        print("\n".join(decisions(log, charge.id)))

        say("3. soft time limit (2s): the slow report gets SoftTimeLimitExceeded, one more try, then a dead letter")
        report = tasks.daily_sales.apply_async(kwargs={"day": "2026-11-24", "seconds": 4})
        print(f"reports.daily_sales[{report.id}] -> {wait_state(report, timeout=40)}")
        print("\n".join(decisions(log, report.id)))

        say(
            "4. the dead letters: card_token was redacted before it reached the store, so that charge cannot be replayed blindly"
        )
        store = ["--file", str(POLICY.relative_to(ROOT)), "--url", url]
        cli("dlq", "list", *store, env=env)

        say(
            "5. the supplier feed is back: replay the ingest dead letters (each is deleted only after the broker took it)"
        )
        set_down("supplier-feed", False)
        out = cli("dlq", "replay", *store, "--task", "catalog.ingest", "--broker", url, "--yes", env=env)
        for new_id in re.findall(r"as task ([0-9a-f-]{36})", out):
            replayed = tasks.app.AsyncResult(new_id)
            print(f"catalog.ingest[{new_id}] -> {wait_state(replayed)}: {replayed.result}")
        cli("dlq", "list", *store, env=env)

        console = start_console(env, tmp)
    finally:
        stop(console)
        stop(worker)
        redis_proc.terminate()
        redis_proc.wait()
    say(f"done; the worker's full log is in {log}")


if __name__ == "__main__":
    main()
