"""The console's pages and actions (Starlette + Jinja2, server-rendered, no JavaScript).

Pages: ``/dead-letters`` (list, groups and chart; ``?task=&reason=&since=``),
``/dead-letters/<id>``, ``/policies``, ``/policies/<task>``, ``/fleet``,
``/activity``, ``/metrics`` (Prometheus text). Actions (operator role, CSRF):
bulk replay of a filter (a dry-run count first, then a confirmation that
names it), replay of one record, purge of a filter (typed confirmation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from celery_policy.deadletter.store import Filter, RedisStreamStore, StoreUnavailableError
from celery_policy.durations import DurationError, parse_duration
from celery_policy.metrics import GaugeCollector, ProcessCounters
from celery_policy.web import actions
from celery_policy.web.data import GroupIndex, read_page, read_record
from celery_policy.web.security import HostPolicy, Role, SecurityMiddleware, Tokens, bearer, csrf_ok, new_csrf

HERE = Path(__file__).resolve().parent
REASONS = ("exhausted", "permanent", "unknown", "unknown_exhausted", "deadline", "redelivery_limit", "time_limit")


@dataclass
class WebConfig:
    """What one console serves."""

    store: RedisStreamStore
    tokens: Tokens
    host: str = "127.0.0.1"
    port: int = 8808
    policy: Any = None  # celery_policy.resolve.Policy from --file (or the app's), for /policies and /fleet
    app: Any = None  # the Celery app (--app): replay target and the fleet's broker
    broker_url: str | None = None  # replay target without --app
    allowed_hosts: tuple[str, ...] = ()
    secure_cookies: bool = False
    fleet_timeout_s: float = 1.0
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Who:
    role: Role | None
    name: str
    via: str  # "session" | "bearer" | "anonymous"


class Console:
    """State shared by the request handlers of one console."""

    def __init__(self, config: WebConfig) -> None:
        from prometheus_client import CollectorRegistry

        self.config = config
        self.store = config.store
        self.index = GroupIndex(config.store)
        self.activity = actions.ActivityLog(config.store)
        self.registry = CollectorRegistry()
        self.counters = ProcessCounters(self.registry)
        self.registry.register(
            GaugeCollector(
                "celery_policy_dead_letters",
                "Dead letters in the store, by task and reason",
                ("task", "reason"),
                lambda: {key: float(n) for key, n in self.index.totals().items()},
            )
        )
        self._replay_app: Any = config.app
        self._lock = threading.Lock()
        import jinja2

        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
        self.templates = Jinja2Templates(env=env)
        self.templates.env.filters["when"] = _when
        self.templates.env.filters["rel"] = _relative
        self.templates.env.filters["short_exc"] = lambda name: str(name).rsplit(".", 1)[-1]

    def replay_app(self) -> Any:
        with self._lock:
            if self._replay_app is None:
                from celery import Celery

                self._replay_app = Celery("celery-policy-web", broker=self.config.broker_url or self.store.url)
            return self._replay_app

    # -- identity ------------------------------------------------------------------------------

    def who(self, request: Request) -> Who:
        tokens = self.config.tokens
        presented = bearer(request.headers)
        if presented is not None:
            role = tokens.role_of(presented)
            return Who(role, f"{role or 'unknown'} (bearer)", "bearer")
        role = request.session.get("role")
        if role in ("operator", "readonly"):
            return Who(role, str(request.session.get("who", role)), "session")
        if not tokens.configured:
            return Who("readonly", "anonymous", "anonymous")
        return Who(None, "anonymous", "anonymous")

    def render(self, request: Request, name: str, who: Who, status_code: int = 200, **context: Any) -> Response:
        csrf = request.session.get("csrf")
        if csrf is None:
            csrf = request.session["csrf"] = new_csrf()
        response: Response = self.templates.TemplateResponse(
            request,
            name,
            {"who": who, "csrf": csrf, "auth_configured": self.config.tokens.configured, "reasons": REASONS, **context},
            status_code=status_code,
        )
        return response


def _relative(text: Any) -> str:
    """Paths under the console's working directory shown relative to it (``policies/x.yaml:12``)."""
    import os

    here = os.getcwd().rstrip(os.sep) + os.sep
    return str(text).replace(here, "")


def _when(epoch: float | int | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _filter_from(params: Any) -> tuple[Filter, dict[str, str], str | None]:
    """The Filter of ``?task=&reason=&since=`` (or the same form fields); an error text for a bad ``since``."""
    task = (params.get("task") or "").strip() or None
    reason = (params.get("reason") or "").strip() or None
    since = (params.get("since") or "").strip() or None
    error = None
    since_s = None
    if since:
        try:
            since_s = parse_duration(since)
        except DurationError as exc:
            error = f"since: {exc}"
    shown = {k: v for k, v in (("task", task), ("reason", reason), ("since", since)) if v}
    return Filter(task=task, reason=reason, since_s=since_s), shown, error


def hourly(points: list[tuple[int, int]], hours: int = 24) -> list[tuple[int, int]]:
    """``points`` on a continuous hourly axis ending at the latest hour (at least ``hours`` slots, at most 48)."""
    if not points:
        return []
    counts = dict(points)
    last = max(counts)
    first = min(*counts, last - (hours - 1) * 3600)
    first = max(first, last - 47 * 3600)
    return [(hour, counts.get(hour, 0)) for hour in range(first, last + 1, 3600)]


def _bar_chart(points: list[tuple[int, int]], width: int = 1100, height: int = 150) -> dict[str, Any]:
    """Bars for an SVG chart (drawn by the template): one per hour, scaled to the largest."""
    if not points:
        return {"bars": [], "width": width, "height": height, "top": 0}
    top = max(n for _, n in points) or 1
    slot = width / len(points)
    bars = []
    for i, (hour, n) in enumerate(points):
        h = (height - 34) * n / top if n else 0.0
        bars.append(
            {
                "x": round(i * slot + 1, 1),
                "y": round(height - 16 - h, 1),
                "w": round(max(slot - 2, 1), 1),
                "h": round(h, 1),
                "label": _when(hour)[5:16],
                "count": n,
            }
        )
    return {"bars": bars, "width": width, "height": height, "top": top}


# --- handlers -----------------------------------------------------------------------------------


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _need(console: Console, request: Request, role: Role = "readonly") -> Who | Response:
    """The caller, or the answer that refuses them (login page, 401 for a bad bearer, 403 for the role)."""
    who = console.who(request)
    if who.role is None:
        if who.via == "bearer":
            return PlainTextResponse("invalid token\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.method == "GET":
            return _login_redirect(request)
        return PlainTextResponse("authentication required\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if role == "operator" and who.role != "operator":
        return PlainTextResponse("this action needs the operator role\n", status_code=403)
    return who


async def _form_checked(console: Console, request: Request, who: Who) -> Any:
    """The POSTed form when its CSRF token is the session's (a bearer call needs none: no ambient cookie)."""
    form = await request.form()
    if who.via != "bearer" and not csrf_ok(request.session, str(form.get("csrf") or "")):
        return None
    return form


def build_app(config: WebConfig) -> Starlette:  # noqa: PLR0915 - the handlers share the console by closure
    """The ASGI app of one console (served by uvicorn in ``celery-policy web``)."""
    console = Console(config)

    async def login_page(request: Request) -> Response:
        who = console.who(request)
        return console.render(request, "login.html", who, next=request.query_params.get("next", "/dead-letters"))

    async def login(request: Request) -> Response:
        form = await request.form()
        who = console.who(request)
        if not csrf_ok(request.session, str(form.get("csrf") or "")):
            return PlainTextResponse("CSRF token missing or wrong\n", status_code=403)
        role = config.tokens.role_of(str(form.get("token") or ""))
        if role is None:
            console.activity.record("anonymous", "login_failed", {}, 0, request.client.host if request.client else "")
            return console.render(request, "login.html", who, status_code=401, error="unknown token", next="/")
        request.session.clear()
        request.session.update({"role": role, "who": role, "csrf": new_csrf()})
        target = str(form.get("next") or "/dead-letters")
        if not target.startswith("/") or target.startswith("//"):
            target = "/dead-letters"
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request.session, str(form.get("csrf") or "")):
            return PlainTextResponse("CSRF token missing or wrong\n", status_code=403)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def home(request: Request) -> Response:
        return RedirectResponse("/dead-letters", status_code=303)

    async def dead_letters(request: Request) -> Response:
        who = _need(console, request)
        if isinstance(who, Response):
            return who
        flt, shown, error = _filter_from(request.query_params)
        if not console.index.view(Filter()).complete:
            console.index.start()  # the groups are counted in the background; the list needs no index
        try:
            console.index.refresh()
            page = read_page(console.store, flt, before=request.query_params.get("before") or None)
        except StoreUnavailableError as exc:
            return console.render(request, "error.html", who, status_code=503, message=str(exc))
        groups = console.index.view(flt)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(
                {
                    "records": [r.model_dump(exclude={"traceback"}) for r in page.records],
                    "older": page.older,
                    "groups": [dataclasses.asdict(g) for g in groups.groups[:200]] if groups.complete else None,
                    "total": groups.total if groups.complete else None,
                }
            )
        return console.render(
            request,
            "dead_letters.html",
            who,
            page=page,
            groups=groups,
            chart=_bar_chart(hourly(groups.hours)),
            filter=shown,
            query=urlencode(shown),
            error=error,
            store=console.store.describe(),
            index_error=console.index.error,
        )

    async def dead_letter(request: Request) -> Response:
        who = _need(console, request)
        if isinstance(who, Response):
            return who
        entry_id = request.path_params["entry_id"]
        try:
            record = read_record(console.store, entry_id)
        except StoreUnavailableError as exc:
            return console.render(request, "error.html", who, status_code=503, message=str(exc))
        if record is None:
            return console.render(request, "error.html", who, status_code=404, message=f"no dead letter {entry_id}")
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(record.model_dump())
        return console.render(request, "dead_letter.html", who, record=record)

    async def replay_one(request: Request) -> Response:
        who = _need(console, request, "operator")
        if isinstance(who, Response):
            return who
        form = await _form_checked(console, request, who)
        if form is None:
            return PlainTextResponse("CSRF token missing or wrong\n", status_code=403)
        entry_id = request.path_params["entry_id"]
        record = read_record(console.store, entry_id)
        if record is None:
            return console.render(request, "error.html", who, status_code=404, message=f"no dead letter {entry_id}")
        return _do_replay(request, who, [record], {"id": entry_id})

    def _do_replay(
        request: Request, who: Who, records: Iterable[Any], shown: dict[str, Any], options: dict[str, str] | None = None
    ) -> Response:
        seen = actions.Seen()
        report = actions.replay_records(console.store, seen.track(records), console.replay_app(), **(options or {}))
        actions.count_replays(console.counters.inc, {k: task for k, (task, _) in seen.keys.items()}, report)
        console.index.forget(seen.keys[entry][1] for entry, _ in report.replayed if entry in seen.keys)
        console.activity.record(
            who.name,
            "replay",
            shown,
            len(report.replayed),
            f"{len(report.skipped)} skipped, {len(report.failed)} failed"
            + (f"; {report.stopped}" if report.stopped else ""),
        )
        if who.via == "bearer":
            return JSONResponse(
                {
                    "replayed": report.replayed,
                    "skipped": report.skipped,
                    "failed": report.failed,
                    "stopped": report.stopped,
                }
            )
        return console.render(request, "replayed.html", who, report=report, filter=shown)

    async def _operator_filter(request: Request) -> Response | tuple[Who, Any, Filter, dict[str, Any]]:
        """The operator, the CSRF-checked form and the filter it selects, or the response that refuses it."""
        who = _need(console, request, "operator")
        if isinstance(who, Response):
            return who
        form = await _form_checked(console, request, who)
        if form is None:
            return PlainTextResponse("CSRF token missing or wrong\n", status_code=403)
        flt, shown, error = _filter_from(form)
        if error:
            return console.render(request, "error.html", who, status_code=400, message=error)
        return who, form, flt, shown

    async def replay_filter(request: Request) -> Response:
        checked = await _operator_filter(request)
        if isinstance(checked, Response):
            return checked
        who, form, flt, shown = checked
        options = {key: str(form.get(key) or "").strip() for key in ("spread", "name")}
        if options["spread"]:
            try:
                parse_duration(options["spread"])
            except ValueError as exc:
                return console.render(request, "error.html", who, status_code=400, message=f"spread: {exc}")
        count = actions.count_matching(console.store, flt)
        confirmed = str(form.get("confirm_count") or "")
        if confirmed != str(count) or not count:
            # the dry run: how many records this filter selects now; nothing is published
            if who.via == "bearer":
                return JSONResponse({"dry_run": True, "count": count})
            return console.render(
                request,
                "confirm_replay.html",
                who,
                count=count,
                filter=shown,
                changed=bool(confirmed),
                options=options,
            )
        # the records confirmed, oldest first: one that failed since is not replayed unseen
        shown = {**shown, **{key: value for key, value in options.items() if value}}
        return _do_replay(request, who, console.store.iter(flt, limit=count), shown, options)

    async def purge_filter(request: Request) -> Response:
        checked = await _operator_filter(request)
        if isinstance(checked, Response):
            return checked
        who, form, flt, shown = checked
        count = actions.count_matching(console.store, flt)
        phrase = f"delete {count}"
        if str(form.get("confirm") or "").strip() != phrase or not count:
            status = 400 if form.get("confirm") else 200
            return console.render(
                request, "confirm_purge.html", who, status_code=status, count=count, filter=shown, phrase=phrase
            )
        seen = actions.Seen()
        deleted = actions.purge_matching(console.store, flt, count, seen)
        console.index.forget(key for _, key in seen.keys.values())
        console.activity.record(who.name, "purge", shown, deleted)
        return console.render(request, "purged.html", who, deleted=deleted, filter=shown)

    async def task_state(request: Request) -> Response:
        """The state of a task (a replayed one) in the app's result backend; its result value is not shown."""
        who = _need(console, request)
        if isinstance(who, Response):
            return who
        task_id = request.path_params["task_id"]
        app = console.config.app
        if app is None:
            return console.render(request, "error.html", who, status_code=404, message="task states need --app")
        try:
            result = app.AsyncResult(task_id)
            state, done = str(result.state), getattr(result, "date_done", None)
        except Exception as exc:  # the result backend is down or disabled
            return console.render(request, "error.html", who, status_code=503, message=f"result backend: {exc}")
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"task_id": task_id, "state": state})
        return console.render(request, "task.html", who, task_id=task_id, state=state, done=done)

    async def activity(request: Request) -> Response:
        who = _need(console, request)
        if isinstance(who, Response):
            return who
        return console.render(request, "activity.html", who, entries=console.activity.recent())

    async def metrics(request: Request) -> Response:
        who = _need(console, request)
        if isinstance(who, Response):
            return who
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        with contextlib.suppress(StoreUnavailableError):  # the gauges show the last counts
            console.index.refresh()
        if not console.index.view(Filter()).complete:
            console.index.start()
        return Response(generate_latest(console.registry), media_type=CONTENT_TYPE_LATEST)

    from celery_policy.web import pages

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/dead-letters", dead_letters),
        Route("/dead-letters/replay", replay_filter, methods=["POST"]),
        Route("/dead-letters/purge", purge_filter, methods=["POST"]),
        Route("/dead-letters/{entry_id}", dead_letter),
        Route("/dead-letters/{entry_id}/replay", replay_one, methods=["POST"]),
        Route("/policies", pages.policies_handler(console, _need)),
        Route("/policies/{task:path}", pages.policy_handler(console, _need)),
        Route("/fleet", pages.fleet_handler(console, _need)),
        Route("/tasks/{task_id}", task_state),
        Route("/activity", activity),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityMiddleware, hosts=HostPolicy(config.host, config.port, config.allowed_hosts)),
        Middleware(
            SessionMiddleware,
            secret_key=config.session_secret,
            session_cookie="celery_policy_session",
            max_age=8 * 3600,
            same_site="strict",
            https_only=config.secure_cookies,
        ),
    ]
    starlette = Starlette(routes=routes, middleware=middleware)
    starlette.state.console = console
    return starlette
