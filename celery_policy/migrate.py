"""A policy file equivalent to an app's current failure handling (``celery-policy init --app proj.celery``).

:func:`generate` imports the app as ``celery -A`` does, finalizes it, and reads

- ``app.conf``: ``task_acks_late``, ``task_reject_on_worker_lost``,
  ``task_acks_on_failure_or_timeout``, ``task_time_limit``, ``task_soft_time_limit``,
  ``task_default_retry_delay``, ``task_default_rate_limit``, ``worker_prefetch_multiplier``,
  the broker's ``visibility_timeout``, ``task_annotations`` (mappings; ``'*'`` becomes
  ``defaults``) and ``task_routes`` (mappings of names or globs to a queue);
- each task's decorator options: ``autoretry_for``, ``dont_autoretry_for``,
  ``max_retries``, ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``,
  ``retry_kwargs``, ``default_retry_delay``, ``acks_late``, ``reject_on_worker_lost``,
  ``acks_on_failure_or_timeout``, ``time_limit``, ``soft_time_limit``, ``expires``, ``rate_limit``.

Each section of the written file carries a comment naming where its values came
from. What has no policy equivalent (a router function, an annotation object, a
datetime ``expires``) is listed in a comment and left out. Once the policy is
installed it wins over the decorators, and ``check --app`` lists the decorator
options left to delete (CP304).

How Celery's options translate (Celery's own defaults fill what a task leaves unset):

=====================================  =====================================================
Celery                                 policy
=====================================  =====================================================
autoretry_for / dont_autoretry_for     retry.on / retry.never (unknown: fail, as in Celery)
max_retries, retry_kwargs.max_retries  retry.max_retries
retry_backoff=True / N                 backoff {initial: 1s / N s, factor: 2}
retry_backoff_max, retry_jitter        backoff.max, backoff.jitter (full / none)
no retry_backoff                       backoff {initial: countdown or default_retry_delay,
                                       factor: 1, jitter: none}
acks_late, reject_on_worker_lost       ack.late, ack.reject_on_worker_lost
time_limit, soft_time_limit, expires   timeout.hard, timeout.soft, timeout.expires
rate_limit                             rate_limit
task_routes {name: {queue: q}}         tasks.<name>.route.queue
=====================================  =====================================================
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from celery_policy.appinfo import import_app
from celery_policy.durations import format_duration
from celery_policy.taskoptions import OwnRetries, conf_values, declared_options, installed_runtime, own_retries

CELERY_DEFAULT_RETRY_DELAY = 180.0
CELERY_DEFAULT_BACKOFF_MAX = 600.0
CELERY_DEFAULT_MAX_RETRIES = 3

_CONF = {  # app.conf setting -> the decorator option it is the default of
    "task_acks_late": "acks_late",
    "task_reject_on_worker_lost": "reject_on_worker_lost",
    "task_acks_on_failure_or_timeout": "acks_on_failure_or_timeout",
    "task_time_limit": "time_limit",
    "task_soft_time_limit": "soft_time_limit",
    "task_default_retry_delay": "default_retry_delay",
    "task_default_rate_limit": "rate_limit",
}
_CELERY_CONF_DEFAULTS: dict[str, Any] = {
    "task_acks_late": False,
    "task_reject_on_worker_lost": None,
    "task_acks_on_failure_or_timeout": True,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_default_retry_delay": CELERY_DEFAULT_RETRY_DELAY,
    "task_default_rate_limit": None,
}


@dataclass
class Section:
    """One ``defaults`` or ``tasks.<name>`` entry: its policy fields and where they came from."""

    policy: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # options the task's code uses: they stay in the decorator


def generate(spec: str) -> str:
    """The commented policy file for the app ``spec``. Raises :class:`~celery_policy.appinfo.AppLoadError`.

    Settings are read as the app set them: when the app already installs a
    policy, from the copy ``install()`` kept before it changed ``app.conf``.
    """
    app = import_app(spec, finalize=True)
    conf = conf_values(app)
    defaults = _defaults(conf)
    tasks = _tasks(app, conf)
    _routes(conf.get("task_routes"), tasks, defaults)
    return _render(spec, conf, defaults, tasks)


# --- reading the app ----------------------------------------------------------------------------


def _defaults(conf: Mapping[str, Any]) -> Section:
    options: dict[str, Any] = {}
    for setting, option in _CONF.items():
        value = conf.get(setting)
        if value != _CELERY_CONF_DEFAULTS[setting] and not (value is None and setting == "task_default_retry_delay"):
            options[option] = value
    section = Section()
    if options:
        section.sources.append("app.conf: " + ", ".join(f"{s}={conf.get(s)!r}" for s in _CONF if _CONF[s] in options))
    annotations = _annotation_maps(conf.get("task_annotations"), section)
    star = dict(annotations.get("*", {}))
    if star:
        section.sources.append(f"task_annotations['*']: {_describe(star)}")
    options.update(star)
    section.policy = translate(options, section, inherited={})
    return section


def _tasks(app: Any, conf: Mapping[str, Any]) -> dict[str, Section]:
    runtime = installed_runtime(app)
    annotations = _annotation_maps(conf.get("task_annotations"), Section())
    inherited = _inherited(conf)
    found: dict[str, Section] = {}
    for name, task in sorted(dict(app.tasks).items()):
        if name.startswith("celery."):
            continue
        if runtime is not None:
            declared = dict(runtime.decorator_options.get(name, {}))
        else:
            declared = declared_options(type(task), app)
        star = annotations.get("*", {})
        annotated = {**star, **annotations.get(name, {})}
        # Celery copies annotations onto the task class when binding it: those are not the decorator's
        declared = {k: v for k, v in declared.items() if not (k in annotated and annotated[k] == v)}
        annotated = dict(annotations.get(name, {}))
        section = Section()
        if declared:
            section.sources.append(f"@task({_describe(declared)}) in {type(task).__module__}")
        if annotated:
            section.sources.append(f"task_annotations[{name!r}]: {_describe(annotated)}")
        options = {**declared, **annotated}
        if options:
            section.policy = translate(options, section, inherited=inherited, own=own_retries(task))
        found[name] = section
    return found


def _inherited(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Values a task gets from app.conf (and task_annotations['*']) when its decorator leaves them unset."""
    inherited = {option: conf.get(setting) for setting, option in _CONF.items()}
    star = _annotation_maps(conf.get("task_annotations"), Section()).get("*", {})
    inherited.update(star)
    return inherited


def _annotation_maps(annotations: Any, section: Section) -> dict[str, dict[str, Any]]:
    if not annotations:
        return {}
    entries = annotations if isinstance(annotations, (list, tuple)) else [annotations]
    merged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        previous = getattr(entry, "previous", None)
        if type(entry).__module__.startswith("celery_policy."):  # install() already ran: read what it wrapped
            if previous:
                merged.update(_annotation_maps(list(previous), section))
            continue
        if isinstance(entry, Mapping):
            for name, values in entry.items():
                if isinstance(values, Mapping):
                    merged.setdefault(str(name), {}).update(values)
        else:
            section.skipped.append(f"task_annotations object {type(entry).__name__} (code, not data)")
    return merged


def _routes(routes: Any, tasks: dict[str, Section], defaults: Section) -> None:
    if not routes:
        return
    entries = routes if isinstance(routes, (list, tuple)) else [routes]
    for entry in entries:
        if type(entry).__module__.startswith("celery_policy."):
            continue  # install() already ran: the policy's own router
        if not isinstance(entry, Mapping):
            defaults.skipped.append(
                f"task_routes entry {getattr(entry, '__name__', type(entry).__name__)} (a router function)"
            )
            continue
        for pattern, target in entry.items():
            queue = target.get("queue") if isinstance(target, Mapping) else target if isinstance(target, str) else None
            if not isinstance(queue, str) or getattr(pattern, "pattern", None) is not None:
                defaults.skipped.append(f"task_routes[{pattern!r}] (not a name or glob mapped to a queue)")
                continue
            section = tasks.setdefault(str(pattern), Section())
            section.policy.setdefault("route", {})["queue"] = queue
            section.sources.append(f"task_routes[{pattern!r}] = {target!r}")


def translate(
    options: Mapping[str, Any],
    section: Section,
    *,
    inherited: Mapping[str, Any],
    own: OwnRetries | None = None,
) -> dict[str, Any]:
    """Celery task options -> policy fields (only what ``options`` sets, and only what takes effect).

    Without ``autoretry_for`` Celery retries nothing by itself: ``retry_kwargs``,
    ``retry_backoff``... matter only to the task's own code, so they stay in the
    decorator and a comment says why (with the policy-driven alternative). The
    same holds for ``max_retries``/``default_retry_delay`` when the task calls
    ``self.retry()`` itself (``own``, from :func:`celery_policy.taskoptions.own_retries`).
    """
    policy: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    get = options.get
    own = own or OwnRetries()

    def seen(key: str) -> Any:
        return options[key] if key in options else inherited.get(key)

    retry_kwargs = get("retry_kwargs") or {}
    if "autoretry_for" in options:
        retry["on"] = [_class_path(c) for c in _classes(get("autoretry_for"))]
        if "dont_autoretry_for" in options:
            retry["never"] = [_class_path(c) for c in _classes(get("dont_autoretry_for"))]
        max_retries = retry_kwargs.get("max_retries", get("max_retries", retry_kwargs.get("max_retries")))
        if "max_retries" in options or "max_retries" in retry_kwargs:
            retry["max_retries"] = max_retries
        backoff = _backoff(options, seen, retry_kwargs)
        if backoff:
            retry["backoff"] = backoff
    _hand_written(options, section, own)
    if retry:
        policy["retry"] = retry
    policy.update(_limits_and_acks(options, section))
    if get("rate_limit") is not None:
        policy["rate_limit"] = str(get("rate_limit"))
    return policy


_HAND_RETRY_OPTIONS = ("retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "dont_autoretry_for")


def _hand_written(options: Mapping[str, Any], section: Section, own: OwnRetries) -> None:
    """Comments for the retry options that only the task's own code uses (they stay in the decorator)."""
    autoretry = "autoretry_for" in options
    kept: dict[str, Any] = {}
    if not autoretry:
        kept.update({k: options[k] for k in _HAND_RETRY_OPTIONS if k in options})
    for option in ("max_retries", "default_retry_delay"):
        if option in options and (not autoretry or own.calls_retry or option in own.read_options):
            kept[option] = options[option]
    for option in own.read_options:
        if option in options:
            kept[option] = options[option]
    if not kept:
        return
    reads = sorted(o for o in kept if o in own.read_options)
    if reads:
        why = f"the task's code reads {', '.join(reads)} (at {own.where(reads[0])})"
    elif own.calls_retry:
        why = "the task's own self.retry() uses them"
    else:
        why = "without autoretry_for Celery itself never uses them"
    section.kept.append(f"{_describe(kept)}: not policy, keep them where they are; {why}")
    if own.calls_retry or reads:
        section.kept.append(
            "to let the policy drive the task's own retries, call self.retry(exc=exc) without countdown and set"
        )
        section.kept.append("  " + _entry("retry", _self_retry_block(options)))


def _self_retry_block(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``retry`` block that gives a hand-written retry the schedule its options describe."""
    # with autoretry_for, retry_kwargs belong to autoretry; a bare self.retry() uses the task's attributes
    retry_kwargs = {} if "autoretry_for" in options else (options.get("retry_kwargs") or {})
    block: dict[str, Any] = {"self_retry": "policy"}
    cap = retry_kwargs.get("max_retries", options.get("max_retries", CELERY_DEFAULT_MAX_RETRIES))
    block["max_retries"] = cap
    exponential = options.get("retry_backoff")
    if exponential:
        block["backoff"] = {
            "initial": _duration(1 if exponential is True else float(exponential)),
            "factor": 2,
            "max": _duration(options.get("retry_backoff_max") or CELERY_DEFAULT_BACKOFF_MAX),
            "jitter": "full" if options.get("retry_jitter") else "none",
        }
    else:
        delay = _duration(float(retry_kwargs.get("countdown", options.get("default_retry_delay") or 180)))
        block["backoff"] = {"initial": delay, "factor": 1, "max": delay, "jitter": "none"}
    return block


def _limits_and_acks(options: Mapping[str, Any], section: Section) -> dict[str, Any]:
    """``timeout`` and ``ack`` from time limits, expires and the ack options."""
    policy: dict[str, Any] = {}
    get = options.get
    timeout = {}
    for option, key in (("soft_time_limit", "soft"), ("time_limit", "hard"), ("expires", "expires")):
        value = get(option)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            timeout[key] = _duration(value)
        else:
            section.skipped.append(f"{option}={value!r} (not a number of seconds)")
    if timeout:
        policy["timeout"] = timeout
    ack = {}
    for option, key in (
        ("acks_late", "late"),
        ("reject_on_worker_lost", "reject_on_worker_lost"),
        ("acks_on_failure_or_timeout", "on_failure_or_timeout"),
    ):
        if get(option) is not None:
            ack[key] = bool(get(option))
    if ack:
        policy["ack"] = ack
    return policy


def _backoff(options: Mapping[str, Any], seen: Any, retry_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's autoretry delay as a backoff: exponential with retry_backoff, else a fixed countdown."""
    exponential = seen("retry_backoff")
    backoff: dict[str, Any] = {}
    if exponential:
        backoff["initial"] = _duration(1 if exponential is True else float(exponential))
        backoff["factor"] = 2
        backoff["max"] = _duration(seen("retry_backoff_max") or CELERY_DEFAULT_BACKOFF_MAX)
        jitter = seen("retry_jitter")
        backoff["jitter"] = "none" if jitter is False else "full"
    elif "autoretry_for" in options or "retry_kwargs" in options or "default_retry_delay" in options:
        countdown = retry_kwargs.get("countdown", seen("default_retry_delay") or CELERY_DEFAULT_RETRY_DELAY)
        delay = _duration(float(countdown))
        backoff = {"initial": delay, "factor": 1, "max": delay, "jitter": "none"}
    return backoff


def _classes(value: Any) -> list[type]:
    if isinstance(value, type):
        return [value]
    return [c for c in (value or ()) if isinstance(c, type)]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _duration(seconds: float) -> str | float:
    text = format_duration(float(seconds))
    return text if text else float(seconds)


def _describe(options: Mapping[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, type):
            return value.__name__
        if isinstance(value, (tuple, list)) and all(isinstance(v, type) for v in value):
            return "(" + ", ".join(v.__name__ for v in value) + ("," if len(value) == 1 else "") + ")"
        return repr(value)

    return ", ".join(f"{k}={show(v)}" for k, v in options.items())


# --- writing the file ---------------------------------------------------------------------------


def _entry(key: str, value: Any) -> str:
    """``key: value`` on one line, collections in flow style."""
    text: str = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=sys.maxsize).strip()
    return text[1:-1]  # the braces of the one-key mapping


def _name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][\w.\-]*", name) else json.dumps(name)


def _section_lines(section: Section, indent: str) -> list[str]:
    lines = [f"{indent}# from {source}" for source in section.sources]
    lines += [f"{indent}# not translated: {skipped}" for skipped in section.skipped]
    lines += [f"{indent}# {kept}" for kept in section.kept]
    lines += [f"{indent}{_entry(key, value)}" for key, value in section.policy.items()]
    return lines


def _render(spec: str, conf: Mapping[str, Any], defaults: Section, tasks: dict[str, Section]) -> str:
    out = [
        f"# Generated by `celery-policy init --app {spec}` from the app's settings and task decorators.",
        "# Review it. Once installed, the policy wins where it speaks; `celery-policy check <this file>",
        f"# --app {spec}` lists the decorator options and app.conf settings to delete (CP304),",
        "# never those the tasks' own code reads.",
        "version: 1",
        "",
    ]
    if defaults.policy:
        out += ["defaults:", *_section_lines(defaults, "  ")]
    else:
        out += [*_section_lines(defaults, ""), "defaults: {}  # the app changes none of Celery's defaults"]
    worker = _worker(conf)
    if worker:
        out += ["", "worker:", "  # from app.conf", *[f"  {_entry(k, v)}" for k, v in worker.items()]]
    entries: list[str] = []
    for name, section in tasks.items():
        if section.policy:
            entries += [f"  {_name(name)}:", *_section_lines(section, "    ")]
        elif section.skipped or section.kept:
            entries += [f"  # {name}:", *_section_lines(section, "    # ")]
    out += (
        ["", "tasks:", *entries]
        if any(not e.lstrip().startswith("#") for e in entries)
        else ["", "tasks: {}", *entries]
    )
    unchanged = [n for n, section in tasks.items() if not section.policy and not section.skipped and not section.kept]
    if unchanged:
        out += ["", f"# {len(unchanged)} task(s) set no failure-handling options: {', '.join(unchanged)}"]
    return "\n".join(out) + "\n"


def _worker(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The ``worker`` block: the app.conf settings a policy's ``worker`` sets, where they differ from Celery's."""
    worker: dict[str, Any] = {}
    prefetch = conf.get("worker_prefetch_multiplier")
    if isinstance(prefetch, int) and prefetch != 4:
        worker["prefetch_multiplier"] = prefetch
    if conf.get("task_track_started") is True:
        worker["track_started"] = True
    expires = conf.get("result_expires")
    if isinstance(expires, dt.timedelta):
        expires = expires.total_seconds()
    if isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires > 0 and expires != 86400:
        worker["result_expires"] = _duration(expires)
    for setting, key in (("worker_concurrency", "concurrency"), ("worker_max_tasks_per_child", "max_tasks_per_child")):
        value = conf.get(setting)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            worker[key] = value
    options = conf.get("broker_transport_options") or {}
    visibility = options.get("visibility_timeout") if isinstance(options, Mapping) else None
    if isinstance(visibility, (int, float)) and not isinstance(visibility, bool):
        worker["visibility_timeout"] = _duration(visibility)
    return worker
