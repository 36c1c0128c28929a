"""`celery-policy check`: exit codes, output formats, rule selection, environments, --app, hostile input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_policy.cli import main
from celery_policy.lint.report import use_color

EXPECTED = Path(__file__).resolve().parent / "expected"
APPS = Path(__file__).resolve().parents[1] / "lint" / "apps"

CLEAN = """\
version: 1
errors:
  transient: [builtins.TimeoutError, builtins.ConnectionError]
defaults:
  retry:
    on: [transient]
    max_retries: 5
    backoff: {initial: 1s, factor: 2, max: 5m, jitter: full}
  timeout: {soft: 5m, hard: 5m30s}
  ack: {late: true, reject_on_worker_lost: true, max_redeliveries: 3}
tasks:
  "reports.*":
    timeout: {soft: 30m, hard: 31m}
    route: {queue: reports}
worker:
  prefetch_multiplier: 1
"""

ERRORS = """\
version: 1
defaults:
  retry:
    on: [builtins.Exception]
    max_retries: 3
  timeout: {soft: 5m, hard: 5m30s}
tasks:
  "reports.*":
    timeout:
      soft: 6m
      hard: 5m
  orders.charge:
    ack: {max_redeliveries: 3}
"""

WARNINGS_ONLY = """\
version: 1
defaults:
  retry: {on: [builtins.TimeoutError], max_retries: null}
  timeout: {hard: 5m}
"""

ENVS = """\
version: 1
defaults:
  timeout: {soft: 5m, hard: 5m30s}
tasks:
  orders.charge:
    timeout: {soft: 90s, hard: 2m}
environments:
  development:
    defaults: {retry: {max_retries: 0}}
  production:
    tasks:
      orders.charge: {timeout: {hard: 1m}}
  staging:
    extends: production
"""

APP_POLICY = """\
version: 1
defaults:
  timeout: {soft: 5m, hard: 5m30s}
tasks:
  orders.chrage:
    retry: {max_retries: 8}
  "reports.*":
    route: {queue: report}
  orders.charge:
    idempotency: {key: "charge:{kwargs[order]}"}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project directory; files are named relative to it, as users type them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    monkeypatch.syspath_prepend(str(APPS))
    return tmp_path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def write(name: str, text: str | bytes) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return name


def expected(name: str) -> str:
    return (EXPECTED / name).read_text(encoding="utf-8")


# --- exit codes -------------------------------------------------------------------------------


def test_clean_policy_exits_0_and_says_so(workdir: Path) -> None:
    code, out, err = run("check", write("policies/celery-policy.yaml", CLEAN))
    assert (code, err) == (0, "")
    assert out == expected("check_clean.txt")


def test_error_findings_exit_1_in_compiler_style_with_hints(workdir: Path) -> None:
    code, out, _ = run("check", write("policies/celery-policy.yaml", ERRORS))
    assert code == 1
    assert out == expected("check_errors.txt")


def test_warnings_alone_exit_0_unless_strict(workdir: Path) -> None:
    path = write("policy.yaml", WARNINGS_ONLY)
    code, out, _ = run("check", path)
    assert code == 0
    assert "CP201 warning" in out
    assert out.endswith("0 errors, 1 warning in 1 file\n")
    assert run("check", "--strict", path)[0] == 1


def test_missing_file_is_a_usage_error(workdir: Path) -> None:
    code, out, err = run("check", "policies/nope.yaml")
    assert (code, out) == (2, "")
    assert "cannot read policy file policies/nope.yaml" in err


def test_env_and_all_envs_exclude_each_other(workdir: Path) -> None:
    code, _, err = run("check", write("p.yaml", CLEAN), "--env", "production", "--all-envs")
    assert code == 2
    assert "exclude each other" in err


def test_unknown_rule_selector_is_a_usage_error(workdir: Path) -> None:
    code, _, err = run("check", write("p.yaml", CLEAN), "--select", "CP9")
    assert code == 2
    assert "unknown rule or prefix 'CP9'" in err


# --- formats ----------------------------------------------------------------------------------


def test_json_format_is_versioned_and_complete(workdir: Path) -> None:
    code, out, _ = run("check", "--format", "json", write("policies/celery-policy.yaml", ERRORS))
    assert code == 1
    assert out == expected("check_errors.json")
    data = json.loads(out)
    assert data["version"] == 1
    assert set(data["findings"][0]) == {
        "code", "name", "severity", "message", "hint", "file", "line", "column", "path", "env",
    }  # fmt: skip
    assert data["summary"] == {"errors": 2, "warnings": 1, "files": 1, "exit_code": 1}


def test_github_format_annotates_errors_and_warnings(workdir: Path) -> None:
    code, out, _ = run("check", "--format", "github", write("policies/celery-policy.yaml", ERRORS))
    assert code == 1
    assert out == expected("check_errors.github")
    assert out.startswith("::warning file=policies/celery-policy.yaml,line=4,col=5,title=CP203::")


def test_colour_only_on_a_tty_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            monkeypatch.delenv("NO_COLOR", raising=False)
            assert use_color(terminal)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_color(terminal)
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert not use_color(io.StringIO())
    finally:
        os.close(leader)
        os.close(follower)


def test_text_output_has_no_escape_codes_when_captured(workdir: Path) -> None:
    _, out, _ = run("check", write("p.yaml", ERRORS))
    assert "\x1b[" not in out


# --- selection --------------------------------------------------------------------------------


def test_select_takes_prefixes(workdir: Path) -> None:
    code, out, _ = run("check", "--select", "CP2", write("p.yaml", ERRORS))
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if line.startswith("p.yaml")] == ["CP203"]


def test_ignore_removes_codes_and_wins_over_select(workdir: Path) -> None:
    path = write("p.yaml", ERRORS)
    code, out, _ = run("check", "--ignore", "CP103,CP113", path)
    assert code == 0
    assert "CP103" not in out
    assert "CP113" not in out
    code, out, _ = run("check", "--select", "CP1", "--ignore", "CP103", path)
    assert code == 1
    assert re.findall(r"CP\d{3}", out) == ["CP113"]


def test_select_by_rule_name(workdir: Path) -> None:
    code, out, _ = run("check", "--select", "soft-not-below-hard", write("p.yaml", ERRORS))
    assert code == 1
    assert set(re.findall(r" (CP\d{3}) ", out)) == {"CP103"}


# --- files and environments -------------------------------------------------------------------


def test_several_files_merge_in_order(workdir: Path) -> None:
    base = write("base.yaml", CLEAN)
    team = write("team.yaml", "tasks:\n  orders.charge:\n    timeout: {soft: 10m}\n")
    code, out, _ = run("check", base, team)
    assert code == 1
    assert out.startswith("team.yaml:3:15: CP103 error: soft timeout 10m is not below hard timeout 5m30s")
    assert out.endswith("in 2 files\n")


def test_env_checks_the_file_as_seen_in_that_environment(workdir: Path) -> None:
    path = write("p.yaml", ENVS)
    assert run("check", path)[0] == 0
    code, out, _ = run("check", path, "--env", "production")
    assert code == 1
    assert "soft timeout 1m30s is not below hard timeout 1m" in out
    assert out.endswith("1 error, 0 warnings in 1 file (env production)\n")


def test_all_envs_reports_each_finding_once_and_names_its_environments(workdir: Path) -> None:
    code, out, _ = run("check", write("p.yaml", ENVS), "--all-envs")
    assert code == 1
    assert out == expected("check_all_envs.txt")
    code, out, _ = run("check", "--format", "json", "p.yaml", "--all-envs")
    findings = json.loads(out)["findings"]
    assert [f["env"] for f in findings] == ["production, staging"]


def test_unknown_env_is_a_finding(workdir: Path) -> None:
    code, out, _ = run("check", write("p.yaml", ENVS), "--env", "producton")
    assert code == 1
    assert out.startswith(
        "p.yaml:1:1: CP111 error: unknown environment 'producton'\n  help: did you mean 'production'?"
    )


# --- --app ------------------------------------------------------------------------------------


def test_app_cross_checks(workdir: Path) -> None:
    code, out, _ = run("check", write("p.yaml", APP_POLICY), "--app", "lintapp_redis")
    assert code == 1
    assert out == expected("check_app.txt")


def test_app_given_as_module_and_attribute(workdir: Path) -> None:
    code, out, _ = run("check", write("p.yaml", APP_POLICY), "--app", "lintapp_amqp:celery", "--select", "CP301")
    assert code == 1
    assert "tasks are read from --app lintapp_amqp:celery" in out


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("lintapp_broken", "cannot import Celery app 'lintapp_broken': RuntimeError: configuration missing"),
        ("lintapp_noapp", "'lintapp_noapp' is not a Celery app"),
        ("no_such_module_xyz", "No module named 'no_such_module_xyz'"),
    ],
)
def test_an_app_that_does_not_load_is_a_usage_error(workdir: Path, app: str, message: str) -> None:
    code, out, err = run("check", write("p.yaml", CLEAN), "--app", app)
    assert (code, out) == (2, "")
    assert message in err


def test_exception_classes_import_relative_to_the_app_directory(workdir: Path) -> None:
    policy = CLEAN.replace("builtins.ConnectionError]", "builtins.ConnectionError, lintapp_errors.PermanentError]")
    code, out, _ = run("check", write("p.yaml", policy), "--app", "lintapp_redis")
    assert code == 0, out


# --- the rules command ------------------------------------------------------------------------


def test_rules_lists_every_rule(workdir: Path) -> None:
    code, out, _ = run("rules")
    assert code == 0
    assert out == expected("rules_list.txt")


def test_rules_explains_one_rule_with_a_bad_and_a_good_example(workdir: Path) -> None:
    code, out, _ = run("rules", "CP103")
    assert code == 0
    assert out == expected("rules_CP103.txt")


# --- hostile input ----------------------------------------------------------------------------

DEEP = "version: 1\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(80)) + "  " * 80 + "leaf: 1\n"

BAD_INPUTS: dict[str, tuple[str | bytes, str]] = {
    "malformed-yaml": ("version: 1\ndefaults: {retry: [\n", "CP100"),
    "wrong-type": ("version: 1\ndefaults:\n  retry: {max_retries: lots}\n", "CP101"),
    "negative-duration": ("version: 1\ndefaults:\n  timeout: {hard: -5m}\n", "CP104"),
    "soft-not-below-hard": ("version: 1\ndefaults:\n  timeout: {soft: 6m, hard: 5m}\n", "CP103"),
    "bad-glob": ('version: 1\ntasks:\n  "reports.[a-": {}\n', "CP105"),
    "non-exception-class": ("version: 1\ndefaults:\n  retry: {on: [builtins.print]}\n", "CP107"),
    "unknown-group": ("version: 1\ndefaults:\n  retry: {on: [transient]}\n", "CP106"),
    "circular-environment": ("version: 1\nenvironments:\n  a: {extends: b}\n  b: {extends: a}\n", "CP112"),
    "missing-environment": ("version: 1\nenvironments:\n  a: {extends: nowhere}\n", "CP111"),
    "empty-file": ("", "CP101"),
    "only-a-comment": ("# nothing here\n", "CP101"),
    "binary-file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "CP100"),
    "not-utf8": (b"version: 1\nname: caf\xe9\n", "CP100"),
    "ten-megabytes": (b"# " + b"x" * (10 * 1024 * 1024) + b"\n", "CP100"),
    "deeply-nested": (DEEP, "CP100"),
    "scalar-document": ("just a string\n", "CP101"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_a_located_finding_and_exit_1(workdir: Path, name: str) -> None:
    content, code_expected = BAD_INPUTS[name]
    code, out, err = run("check", write("policy.yaml", content))
    assert code == 1, (out, err)
    pattern = re.compile(rf"^policy\.yaml:\d+:\d+: {code_expected} error: ", re.MULTILINE)
    assert pattern.search(out), out


def test_a_pattern_matching_no_task_is_an_error_with_app(workdir: Path) -> None:
    code, out, _ = run("check", write("p.yaml", 'version: 1\ntasks:\n  "invoices.*": {}\n'), "--app", "lintapp_redis")
    assert code == 1
    assert "p.yaml:3:3: CP301 error: pattern 'invoices.*' matches no registered task" in out


KEYS = [
    "version", "errors", "defaults", "tasks", "worker", "environments", "retry", "timeout", "ack", "on", "never",
    "max_retries", "backoff", "soft", "hard", "late", "extends", "route", "queue", "idempotency", "key", "rules",
    "initial", "factor", "jitter", "prefetch_multiplier", "pool", "visibility_timeout", "orders.*", "a.b",
]  # fmt: skip
SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=".\x00"), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    SAFE_TEXT,
    st.sampled_from(["5m", "-1s", "1h30m", "builtins.ValueError", "nosuchmod_zz.Error", "[z-a]*", "{kwargs[x]}"]),
)
keys = st.one_of(st.sampled_from(KEYS), SAFE_TEXT)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)


@settings(
    max_examples=int(os.environ.get("CELERY_POLICY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    doc=st.one_of(
        documents,
        st.dictionaries(st.just("version"), st.just(1)).flatmap(
            lambda base: st.dictionaries(st.sampled_from(KEYS), documents, max_size=5).map(lambda d: {**base, **d})
        ),
    ),
    noise=st.one_of(st.just(""), st.text(max_size=40)),
    args=st.sampled_from([(), ("--all-envs",), ("--format", "json"), ("--strict", "--format", "github")]),
)
def test_random_documents_never_crash_the_cli(workdir: Path, doc: Any, noise: str, args: tuple[str, ...]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True) + noise
    Path("fuzz.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out, err = run("check", "fuzz.yaml", *args)
    assert code in (0, 1, 2), (code, out, err)
    assert "internal error" not in out, out
    assert "Traceback" not in out + err


durations = st.one_of(st.integers(0, 10_000), st.sampled_from(["500ms", "30s", "5m", "1h", "2h", "1d", "0"]))
exception_lists = st.lists(
    st.sampled_from(
        ["transient", "builtins.Exception", "TimeoutError", "builtins.ValueError", "lintapp_errors.RateLimited"]
    ),
    max_size=3,
)
sections = st.fixed_dictionaries(
    {},
    optional={
        "retry": st.fixed_dictionaries(
            {},
            optional={
                "on": exception_lists,
                "never": exception_lists,
                "unknown": st.sampled_from(["retry", "fail"]),
                "max_retries": st.one_of(st.none(), st.integers(0, 40)),
                "unknown_max_retries": st.one_of(st.none(), st.integers(0, 40)),
                "deadline": st.one_of(st.none(), durations),
                "backoff": st.fixed_dictionaries(
                    {},
                    optional={
                        "initial": durations,
                        "factor": st.sampled_from([1, 1.5, 2]),
                        "max": durations,
                        "jitter": st.sampled_from(["full", "equal", "none"]),
                    },
                ),
                "rules": st.lists(
                    st.fixed_dictionaries(
                        {"on": exception_lists.filter(bool)},
                        optional={"max_retries": st.integers(0, 30), "delay_from": st.just("retry_after")},
                    ),
                    max_size=2,
                ),
            },
        ),
        "timeout": st.fixed_dictionaries(
            {}, optional={"soft": st.one_of(st.none(), durations), "hard": st.one_of(st.none(), durations)}
        ),
        "ack": st.fixed_dictionaries(
            {},
            optional={
                "late": st.booleans(),
                "reject_on_worker_lost": st.booleans(),
                "max_redeliveries": st.one_of(st.none(), st.integers(0, 30)),
            },
        ),
        "dead_letter": st.fixed_dictionaries({"enabled": st.booleans()}),
        "route": st.fixed_dictionaries({"queue": st.sampled_from(["celery", "reports", "bulk", "nowhere"])}),
        "idempotency": st.fixed_dictionaries(
            {"key": st.sampled_from(["k:{kwargs[order_id]}", "{args[0]}", "{task}", "{kwargs.x}", "{oops"])}
        ),
        "rate_limit": st.sampled_from(["10/s", "1/m", "5", "0.5/h"]),
    },
)
task_names = st.sampled_from(["orders.*", "*.charge", "*s.charge", "orders.charge", "reports.[a-z]*", "mail.*", "x["])
policies = st.fixed_dictionaries(
    {"version": st.just(1), "errors": st.just({"transient": ["builtins.TimeoutError"]})},
    optional={
        "defaults": sections,
        "tasks": st.dictionaries(task_names, sections, max_size=4),
        "worker": st.fixed_dictionaries(
            {},
            optional={
                "prefetch_multiplier": st.integers(0, 8),
                "pool": st.sampled_from(["prefork", "solo", "gevent", "threads"]),
                "visibility_timeout": durations,
                "consumer_timeout": durations,
                "result_expires": durations,
                "reliable_fetch": st.booleans(),
            },
        ),
        "environments": st.dictionaries(
            st.sampled_from(["production", "staging"]),
            st.fixed_dictionaries({}, optional={"defaults": sections, "extends": st.sampled_from(["production", "x"])}),
            max_size=2,
        ),
    },
)


@settings(
    max_examples=int(os.environ.get("CELERY_POLICY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    policy=policies,
    args=st.sampled_from(
        [
            (),
            ("--all-envs",),
            ("--app", "lintapp_redis"),
            ("--app", "lintapp_amqp", "--all-envs"),
            ("--app", "lintapp_deploy:dedupe_short", "--all-envs"),
            ("--app", "lintapp_deploy:amqp_native"),
            ("--app", "lintapp_deploy:sqs"),
        ]
    ),
    comment=st.sampled_from(["", "# celery-policy: ignore[CP2]\n", "x: 1  # celery-policy: ignore[CP201, CP229]\n"]),
)
def test_random_well_formed_policies_run_every_rule_without_crashing(
    workdir: Path, policy: dict[str, Any], args: tuple[str, ...], comment: str
) -> None:
    Path("fuzz.yaml").write_text(comment + yaml.safe_dump(policy), encoding="utf-8")
    code, out, err = run("check", "--format", "json", "fuzz.yaml", *args)
    assert code in (0, 1), (code, out, err)
    report = json.loads(out)
    assert not [f for f in report["findings"] if "internal error" in f["message"]], report["findings"]


def test_a_thousand_patterns_and_names_check_quickly(workdir: Path) -> None:
    """Pattern checks are bucketed by literal prefix, not compared pairwise."""
    tasks = {}
    for i in range(1000):
        tasks[f"svc{i:04d}.*"] = {"retry": {"max_retries": i % 7}, "timeout": {"soft": 60, "hard": 90}}
        tasks[f"svc{i:04d}.job{i}"] = {"retry": {"max_retries": 2}}
    document = {"version": 1, "defaults": {"timeout": {"soft": 300, "hard": 330}}, "tasks": tasks}
    path = write("big.yaml", yaml.safe_dump(document))
    started = time.perf_counter()
    code, out, _ = run("check", path, "--all-envs")
    assert (code, out) == (0, "no problems in 1 file (base only: the files define no environments)\n")
    assert time.perf_counter() - started < 15
