"""The support matrix: every Celery/kombu release line and Python line celery-policy claims.

    nox                        # the whole matrix: every line, the floors, every Python
    nox -t lines               # the worker tests on each Celery/kombu line
    nox -s "line(5.3)"         # ... on one line
    nox -s floors              # the worker tests with every runtime dependency at its lower bound
    nox -s python-3.13         # the whole suite on one Python line, newest Celery line
    nox -t figures             # the README's per-line chaos and throughput figures

Each session makes its own virtualenv under ``.nox/`` and runs against
redis-server processes the tests start themselves (and the local RabbitMQ
for the RabbitMQ tests), exactly as ``./scripts/test.sh`` does. The README's
support table is filled from these sessions' results.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import nox
import tomllib

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["matrix"]

ROOT = Path(__file__).parent
# (celery, kombu) per release line: the newest release of each line when the matrix was last run.
LINES = {
    "5.3": ("5.3.6", "5.3.7"),
    "5.4": ("5.4.0", "5.4.2"),
    "5.5": ("5.5.3", "5.5.4"),
    "5.6": ("5.6.3", "5.6.2"),
    "5.7": ("5.7.0", "5.7.0"),
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
OLDEST_PYTHON, NEWEST_LINE = PYTHONS[0], "5.7"
# The real-worker tests: prefork and solo workers, reliable fetch, the small chaos run, the bare wheel.
WORKER_TESTS = ("-m", "worker or compat")


def _pyenv_builds() -> list[str]:
    """The bin folders of pyenv's builds, newest patch release first (pyenv's shims only run the global version)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    builds = glob.glob(f"{root}/versions/3.*/bin")
    return sorted(builds, key=_version_key, reverse=True)


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"versions/([\d.]+)/", path)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


# so that python="3.10" finds pyenv's python3.10 when it is not on PATH
os.environ["PATH"] = os.pathsep.join([*_pyenv_builds(), os.environ.get("PATH", "")])


def floors() -> list[str]:
    """Every runtime dependency of pyproject.toml pinned at its lower bound (``>=X`` becomes ``==X``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = []
    for requirement in project["dependencies"]:
        name, _, rest = requirement.partition(">=")
        if not rest:
            continue
        version, _, marker = rest.partition(";")
        pin = f"{name.strip()}=={version.strip()}"
        pins.append(f"{pin}; {marker.strip()}" if marker else pin)
    return pins


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", f"--timeout={os.environ.get('PYTEST_TIMEOUT', '300')}",
        "-q", *args, *session.posargs,
    )  # fmt: skip


_VERSIONS = (
    "import sys, celery, kombu, redis; "
    "print('python', sys.version.split()[0], 'celery', celery.__version__, 'kombu', kombu.__version__, "
    "'redis-py', redis.__version__)"
)


def _install_line(session: nox.Session, line: str, *extra: str) -> None:
    celery, kombu = LINES[line]
    session.install("-e", ".[test]", f"celery=={celery}", f"kombu[redis]=={kombu}", *extra)
    session.run("python", "-c", _VERSIONS)


@nox.session(python=OLDEST_PYTHON, tags=["lines"])
@nox.parametrize("line", list(LINES), ids=list(LINES))
def line(session: nox.Session, line: str) -> None:
    """The real-worker tests on one Celery/kombu release line."""
    _install_line(session, line)
    _pytest(session, *WORKER_TESTS)


@nox.session(name="floors", python=OLDEST_PYTHON)
def floors_session(session: nox.Session) -> None:
    """The oldest Python with every runtime dependency at its lower bound: the bounds are what ran."""
    session.install("-e", ".[test]", *floors())
    session.run("python", "-c", _VERSIONS)
    _pytest(session, *WORKER_TESTS)


@nox.session(python=list(PYTHONS), tags=["pythons"])
def python(session: nox.Session) -> None:
    """The whole suite on one Python line, newest Celery line."""
    _install_line(session, NEWEST_LINE)
    _pytest(session)


@nox.session(python=OLDEST_PYTHON, tags=["figures"])
@nox.parametrize("line", list(LINES), ids=list(LINES))
def figures(session: nox.Session, line: str) -> None:
    """The README's per-line figures: a small chaos run and the end-to-end throughput ratio vs plain Celery."""
    _install_line(session, line)
    results = ROOT / "benchmarks" / "results" / f"line-{line}"
    results.mkdir(parents=True, exist_ok=True)
    session.run(
        "python", "scripts/chaos.py", "--tasks", "1000", "--main-kills", "3", "--child-kills", "2", "--restarts", "1",
        "--json", str(results / "chaos.json"),
    )  # fmt: skip
    session.run(
        "python", "benchmarks/bench_e2e.py", "--tasks", "2000", "--rounds", "3", "--pools", "solo,prefork",
        env={"CELERY_POLICY_BENCH_RESULTS": str(results)},
    )  # fmt: skip


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """Every line, the floors, every Python, in one run."""
    for name in [f"line({key})" for key in LINES] + ["floors"] + [f"python-{v}" for v in PYTHONS]:
        session.notify(name)
