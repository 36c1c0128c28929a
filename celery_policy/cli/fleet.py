"""``celery-policy status``, ``celery-policy diff`` and ``check --diff``: fleets of workers and policy reviews.

Snapshots and diffs are :mod:`celery_policy.fleet`; this module loads the
files and the app, asks the workers, prints, and picks the exit code.

Exit codes: ``diff`` 0 no difference, 1 differences, 2 usage or an invalid
file; ``status`` 0 every worker replied (and, with ``--expect``, runs the
expected policy), 1 drift or no worker replied, 2 usage, 3 the broker could
not be reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from celery_policy import appinfo
from celery_policy.cli import options
from celery_policy.cli.exit import CONNECT, FAILED, OK, USAGE
from celery_policy.cli.project import ProjectConfigError, find_project_config, project_policy
from celery_policy.errors import PolicyError
from celery_policy.fleet import Change, Snapshot, diff, policy_task_names, render_changes, short, snapshot, summary
from celery_policy.resolve import Policy, load


class _Usage(Exception):
    """Exit 2 with this message."""


# --- diff ---------------------------------------------------------------------------------------


def run_diff(
    old_files: Sequence[str],
    new_files: Sequence[str],
    *,
    old_env: str | None,
    new_env: str | None,
    app: str | None,
    fmt: str,
    command: str = "diff",
) -> int:
    """Print the resolved difference of two policies; 0 none, 1 some, 2 usage/invalid."""
    try:
        old_policy = _load(old_files, old_env)
        new_policy = _load(new_files, new_env)
        if app is not None:
            names = _app_task_names(app, (old_policy, new_policy))
            include_defaults = False
        else:
            names = sorted({*policy_task_names(old_policy), *policy_task_names(new_policy)})
            include_defaults = True
        old = snapshot(old_policy, names, include_defaults=include_defaults)
        new = snapshot(new_policy, names, include_defaults=include_defaults)
    except (_Usage, PolicyError) as exc:
        click.echo(f"celery-policy {command}: error: {exc}", err=True)
        return USAGE
    changes = diff(old, new)
    if fmt == "json":
        click.echo(json.dumps(_diff_json(old, new, changes), indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(_diff_text(old, new, changes)))
    return FAILED if changes else OK


def _label(snap: Snapshot) -> str:
    files = ", ".join(snap.files)
    return f"{files} (env {snap.env})" if snap.env is not None else files


def _diff_text(old: Snapshot, new: Snapshot, changes: Sequence[Change]) -> list[str]:
    lines = [f"--- {_label(old)}", f"+++ {_label(new)}"]
    lines += render_changes(changes)
    lines.append(summary(changes))
    return lines


def _diff_json(old: Snapshot, new: Snapshot, changes: Sequence[Change]) -> dict[str, Any]:
    def side(snap: Snapshot) -> dict[str, Any]:
        return {"files": list(snap.files), "env": snap.env, "fingerprint": snap.fingerprint}

    return {"old": side(old), "new": side(new), "changes": [change.to_json() for change in changes]}


def _load(files: Sequence[str], env: str | None) -> Policy:
    for path in files:
        if not os.path.isfile(path):
            raise _Usage(f"no such policy file: {path}")
    policy = load(list(files), check_imports=False)
    if env is not None and env not in policy.environments:
        known = ", ".join(policy.environments) or "none"
        raise _Usage(f"unknown environment '{env}' in {', '.join(files)} (defined: {known})")
    return policy.with_env(env)


def _import_app(spec: str, *, finalize: bool = False) -> Any:
    try:
        return appinfo.import_app(spec, finalize=finalize)
    except appinfo.AppLoadError as exc:
        raise _Usage(str(exc)) from exc


def _app_task_names(spec: str, policies: Iterable[Policy]) -> list[str]:
    """The app's registered tasks (``celery.*`` only when a policy names them), as a worker would see them."""
    registered = list(_import_app(spec, finalize=True).tasks.keys())
    named = {name for policy in policies for name in policy.document.tasks}
    return sorted(name for name in registered if not name.startswith("celery.") or name in named)


# --- status -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    hostname: str
    reply: Mapping[str, Any]
    expected: Snapshot | None = None
    changes: list[Change] = field(default_factory=list)

    @property
    def fingerprint(self) -> str | None:
        value = self.reply.get("fingerprint")
        return str(value) if value else None

    @property
    def drifting(self) -> bool:
        return self.expected is not None and self.fingerprint != self.expected.fingerprint


def run_status(app: str, expect: Sequence[str], env: str | None, fmt: str, timeout: float) -> int:
    """Ask every worker for its policy; print them grouped by fingerprint; with ``expect``, report drift."""
    try:
        expected_policy = _load(expect, env) if expect else None
        celery_app = _import_app(app)
    except (_Usage, PolicyError) as exc:
        click.echo(f"celery-policy status: error: {exc}", err=True)
        return USAGE
    try:
        replies = celery_app.control.broadcast(
            "policy_info", arguments={"detail": bool(expect)}, reply=True, timeout=timeout
        )
    except Exception as exc:  # kombu raises OperationalError and socket errors, depending on the transport
        click.echo(f"celery-policy status: error: cannot reach the broker of '{app}': {exc}", err=True)
        return CONNECT
    workers = _workers(replies or [])
    if expected_policy is not None:
        for worker in workers:
            _compare(worker, expected_policy)
    flow = _breakers_for_status(celery_app, expected_policy)  # breaker states next to the fleet (cli/breakers.py)
    from celery_policy.cli.delayed import delayed_overview, stuck_lines

    waiting, stuck = delayed_overview(celery_app.conf.broker_url) or ({}, {})  # delayed delivery on a Redis broker
    if fmt == "json":
        body = _status_json(workers, expected_policy, expect)
        if flow is not None:
            body["breakers"] = flow[1]
        if waiting:
            body["delayed"] = waiting
        if stuck:
            body["delayed_stuck"] = stuck
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        lines = _status_text(workers, expected_policy, expect, timeout)
        if waiting:
            per_queue = ", ".join(f"{queue} {count}" for queue, count in waiting.items())
            lines += ["", f"delayed messages (waiting in the broker): {per_queue}", *stuck_lines(stuck)]
        if flow is not None:
            lines += ["", *flow[0]]
        click.echo("\n".join(lines))
    if not workers:
        return FAILED
    if expected_policy is not None and any(w.drifting for w in workers):
        return FAILED
    return OK


def _breakers_for_status(celery_app: Any, expected: Policy | None) -> tuple[list[str], Any] | None:
    """Text lines and JSON of the breakers of the policy (--expect, else the app's own); None without breakers."""
    from celery_policy.cli.breakers import breaker_states, render_states, states_json
    from celery_policy.runtime.flow import flow_store_url
    from celery_policy.runtime.install import runtime_for

    policy = expected
    if policy is None:
        runtime = runtime_for(celery_app)
        policy = runtime.policy if runtime is not None else None
    if policy is None or not policy.document.breakers:
        return None
    url = flow_store_url(policy, celery_app.conf.broker_url)
    if url is None:
        return ["breakers: no Redis to read their state from (set flow_store.url)"], {"error": "no flow store"}
    try:
        states = breaker_states(policy, url)
    except Exception as exc:  # redis-py and socket errors: the fleet part of the report still stands
        return [f"breakers: cannot read their state: {exc}"], {"error": str(exc)}
    return ["breakers:", *(f"  {line}" for line in render_states(states))], states_json(states)


def _workers(replies: Iterable[Mapping[str, Any]]) -> list[_Worker]:
    found: dict[str, _Worker] = {}
    for reply in replies:
        for hostname, body in reply.items():
            found[hostname] = _Worker(hostname, body if isinstance(body, Mapping) else {"error": str(body)})
    return [found[name] for name in sorted(found)]


def _compare(worker: _Worker, policy: Policy) -> None:
    """The expected snapshot over the worker's own task set, and the fields that differ from what it runs."""
    tasks = worker.reply.get("tasks")
    if not isinstance(tasks, list) or worker.fingerprint is None:
        worker.expected = snapshot(policy, [])
        worker.changes = []
        return
    worker.expected = snapshot(policy, [str(name) for name in tasks])
    if worker.fingerprint != worker.expected.fingerprint:
        running = worker.reply.get("snapshot")
        if isinstance(running, Mapping):
            worker.changes = diff(worker.expected, Snapshot.from_json(running))


def _groups(workers: Sequence[_Worker]) -> list[tuple[str | None, list[_Worker]]]:
    groups: dict[str | None, list[_Worker]] = {}
    for worker in workers:
        groups.setdefault(worker.fingerprint, []).append(worker)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0] or "~"))


def _status_text(
    workers: Sequence[_Worker], expected: Policy | None, expect: Sequence[str], timeout: float
) -> list[str]:
    if not workers:
        return [f"no worker replied within {timeout:g}s"]
    groups = _groups(workers)
    count = len(workers)
    policies = "policy" if len(groups) == 1 else "policies"
    lines = [f"{count} {'worker' if count == 1 else 'workers'}, {len(groups)} {policies}"]
    if expected is not None:
        where = ", ".join(expect) + (f" (env {expected.env})" if expected.env is not None else "")
        lines.append(f"expected: {where}")
    width = max(len(w.hostname) for w in workers)
    for fingerprint, members in groups:
        lines.append("")
        if fingerprint is None:
            lines.append(f"no policy  {len(members)} {'worker' if len(members) == 1 else 'workers'}")
            lines += [f"  {w.hostname:<{width}}  {w.reply.get('error', 'no reply')}" for w in members]
            continue
        first = members[0].reply
        mark = ""
        if expected is not None:
            mark = "  DRIFT" if any(w.drifting for w in members) else "  as expected"
        env = first.get("env")
        lines.append(
            f"policy {short(fingerprint)}  env {env if env is not None else '(none)'}  "
            f"{len(members)} {'worker' if len(members) == 1 else 'workers'}{mark}"
        )
        for worker in members:
            reply = worker.reply
            files = "  ".join(f"{f['path']} sha256:{str(f['sha256'])[:12]}" for f in reply.get("files", []))
            lines.append(
                f"  {worker.hostname:<{width}}  loaded {reply.get('loaded_at')}  "
                f"celery-policy {reply.get('version')}  {files}"
            )
    drifting = [w for w in workers if w.drifting]
    for worker in drifting:
        assert worker.expected is not None
        lines.append("")
        if worker.fingerprint is None:
            lines.append(f"drift: {worker.hostname} reports no policy ({worker.reply.get('error', 'no reply')})")
            continue
        lines.append(
            f"drift: {worker.hostname} runs {short(worker.fingerprint)}, expected {short(worker.expected.fingerprint)}"
            " (expected → running)"
        )
        lines += render_changes(worker.changes, indent="  ")
    if expected is not None:
        lines.append("")
        if drifting:
            names = ", ".join(w.hostname for w in drifting)
            lines.append(f"{len(drifting)} of {len(workers)} workers drift from the expected policy: {names}")
        else:
            lines.append(f"all {len(workers)} workers run the expected policy")
    return lines


def _status_json(workers: Sequence[_Worker], expected: Policy | None, expect: Sequence[str]) -> dict[str, Any]:
    def worker_json(worker: _Worker) -> dict[str, Any]:
        body = {key: value for key, value in worker.reply.items() if key != "snapshot"}
        body["hostname"] = worker.hostname
        if worker.expected is not None:
            body["expected_fingerprint"] = worker.expected.fingerprint
            body["drift"] = worker.drifting
            body["changes"] = [change.to_json() for change in worker.changes]
        return body

    result: dict[str, Any] = {
        "workers": [worker_json(w) for w in workers],
        "groups": [
            {"fingerprint": fingerprint, "workers": [w.hostname for w in members]}
            for fingerprint, members in _groups(workers)
        ],
    }
    if expected is not None:
        result["expected"] = {"files": list(expect), "env": expected.env}
        result["drift"] = [w.hostname for w in workers if w.drifting]
    return result


def run_env_diff(files: Sequence[str], *, old_env: str | None, new_env: str | None, app: str | None) -> int:
    """``check FILE --env NEW --diff OLD``: the same files in two environments (text)."""
    try:
        files, _ = project_policy(files, None, find_project_config())
    except ProjectConfigError as exc:
        click.echo(f"celery-policy check: error: {exc}", err=True)
        return USAGE
    return run_diff(files, files, old_env=old_env, new_env=new_env, app=app, fmt="text", command="check")


# --- the commands -------------------------------------------------------------------------------


@click.command()
@click.option("--app", "app", required=True, help="Celery app module whose workers are asked (e.g. proj.celery)")
@options.status_options
@options.env_option("environment of --expect")
@options.status_format_options
def status(app: str, expect: tuple[str, ...], env: str | None, fmt: str, timeout: float) -> int:
    """Show which policy each running worker runs, grouped by fingerprint; with --expect exit 1 on drift."""
    if env is not None and not expect:
        raise click.UsageError("--env applies to --expect")
    if expect and env is None:
        try:
            config = find_project_config()
        except ProjectConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        env = config.env if config is not None else None  # [tool.celery-policy] env, as check and explain use
    return run_status(app, list(expect), env, fmt, timeout)


@click.command("diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@options.env_option("environment of both files")
@click.option("--old-env", help="environment of OLD (default: --env)")
@click.option("--new-env", help="environment of NEW (default: --env)")
@click.option("--app", "app", help="compare the app's tasks (default: tasks named in either file, and defaults)")
@options.format_option()
def diff_command(
    old: str, new: str, env: str | None, old_env: str | None, new_env: str | None, app: str | None, fmt: str
) -> int:
    """Print the resolved difference of two policy files, task by task and field by field (exit 1 if any)."""
    if env is None and old_env is None and new_env is None:
        try:
            config = find_project_config()
        except ProjectConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        env = config.env if config is not None else None  # [tool.celery-policy] env, as check and explain use
    return run_diff([old], [new], old_env=old_env or env, new_env=new_env or env, app=app, fmt=fmt)
