"""Loading policy files: merging several files, environment overlays, and errors at the user's line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from celery_policy.errors import Diagnostic, PolicyError
from celery_policy.loader import (
    DEFAULT_POLICY_PATH,
    MAX_FILE_BYTES,
    RawPolicy,
    UnreadableFileError,
    apply_environment,
    default_policy_paths,
    environment_chain,
    merge_raw,
    read_policy_file,
    validate_document,
    validate_overlays,
)
from celery_policy.model import PolicyDocument


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_raw(*paths: str) -> RawPolicy:
    return merge_raw([read_policy_file(p) for p in paths])


def errors_of(raw: RawPolicy, env: str | None = None) -> list[Diagnostic]:
    with pytest.raises(PolicyError) as info:
        validate_document(apply_environment(raw, env))
    return info.value.diagnostics


def only(diagnostics: list[Diagnostic]) -> Diagnostic:
    assert len(diagnostics) == 1, [d.render() for d in diagnostics]
    return diagnostics[0]


def at(diagnostic: Diagnostic) -> tuple[str, int, int]:
    assert diagnostic.location is not None
    return diagnostic.location.file, diagnostic.location.line, diagnostic.location.column


BASE = """\
    version: 1
    errors:
      transient: [builtins.TimeoutError]
    defaults:
      retry:
        on: [transient]
        max_retries: 5
        backoff: {initial: 1s, factor: 2, max: 5m}
      timeout: {soft: 5m, hard: 6m}
    tasks:
      "reports.*":
        timeout: {soft: 30m, hard: 31m}
    """


# --- several files ---------------------------------------------------------------


def test_later_files_override_earlier_ones_per_key(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    team = write(
        tmp_path,
        "team.yaml",
        """\
        version: 1
        defaults:
          retry:
            backoff: {initial: 2s}
        """,
    )
    raw = load_raw(base, team)
    backoff = raw.data["defaults"]["retry"]["backoff"]
    assert backoff == {"initial": "2s", "factor": 2, "max": "5m"}
    assert raw.data["defaults"]["retry"]["max_retries"] == 5
    assert raw.files == (base, team)


def test_provenance_after_merging_files_points_at_the_file_that_supplied_each_value(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    team = write(tmp_path, "team.yaml", "version: 1\ndefaults:\n  retry:\n    backoff: {initial: 2s}\n")
    raw = load_raw(base, team)
    initial = raw.source[("defaults", "retry", "backoff", "initial")]
    factor = raw.source[("defaults", "retry", "backoff", "factor")]
    assert (initial.location.file, initial.location.line, initial.location.column) == (team, 4, 24)
    assert (factor.location.file, factor.location.line) == (base, 8)
    assert initial.layer == factor.layer == "base"


def test_a_later_file_replaces_lists_and_their_item_locations(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    team = write(tmp_path, "team.yaml", "version: 1\ndefaults:\n  retry:\n    on: [builtins.OSError]\n")
    raw = load_raw(base, team)
    assert raw.data["defaults"]["retry"]["on"] == ["builtins.OSError"]
    assert raw.source[("defaults", "retry", "on", 0)].location.file == team
    assert ("defaults", "retry", "on", 1) not in raw.source


def test_three_files_merge_in_the_order_given(tmp_path: Path) -> None:
    files = [
        write(tmp_path, f"{index}.yaml", f"version: 1\nworker: {{prefetch_multiplier: {index}}}\n")
        for index in (1, 2, 3)
    ]
    assert load_raw(*files).data["worker"]["prefetch_multiplier"] == 3
    assert load_raw(*reversed(files)).data["worker"]["prefetch_multiplier"] == 1


def test_validation_errors_after_merging_point_into_the_right_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    team = write(tmp_path, "team.yaml", "version: 1\ndefaults:\n  timeout:\n    soft: forever\n")
    diagnostic = only(errors_of(load_raw(base, team)))
    assert at(diagnostic) == (team, 4, 11)
    assert diagnostic.code == "CP104"
    assert diagnostic.path == "defaults.timeout.soft"


# --- environment overlays ---------------------------------------------------------------

OVERLAYS = """\
    version: 1
    defaults:
      retry:
        on: [builtins.TimeoutError, builtins.ConnectionError]
        max_retries: 5
        backoff: {initial: 1s, max: 5m}
    tasks:
      orders.charge:
        timeout: {soft: 5m, hard: 6m}
    environments:
      development:
        defaults:
          retry: {max_retries: 0, on: [builtins.OSError]}
      staging:
        extends: development
        defaults:
          retry: {backoff: {initial: 3s}}
      production:
        extends: staging
        tasks:
          orders.charge: {timeout: {soft: 90s}}
          orders.refund: {timeout: {hard: 1m}}
    """


def test_an_overlay_deep_merges_mappings(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    data = apply_environment(raw, "staging").data
    assert data["defaults"]["retry"]["backoff"] == {"initial": "3s", "max": "5m"}


def test_an_overlay_replaces_lists_and_scalars(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    retry = apply_environment(raw, "development").data["defaults"]["retry"]
    assert retry["on"] == ["builtins.OSError"]
    assert retry["max_retries"] == 0


def test_an_overlay_adds_new_task_entries_and_keeps_untouched_fields(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    tasks = apply_environment(raw, "production").data["tasks"]
    assert tasks["orders.charge"]["timeout"] == {"soft": "90s", "hard": "6m"}
    assert tasks["orders.refund"] == {"timeout": {"hard": "1m"}}


def test_no_environment_leaves_the_base_untouched_and_drops_environments(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    effective = apply_environment(raw, None)
    assert "environments" not in effective.data
    assert effective.data["defaults"]["retry"]["max_retries"] == 5
    assert not any(path[:1] == ("environments",) for path in effective.source)
    assert raw.data["environments"]  # the input is not modified


def test_overlay_values_remember_their_environment_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", OVERLAYS)
    effective = apply_environment(read_policy_file(path), "production")
    soft = effective.source[("tasks", "orders.charge", "timeout", "soft")]
    hard = effective.source[("tasks", "orders.charge", "timeout", "hard")]
    assert (soft.layer, soft.location.line, soft.location.column) == ("env:production", 21, 39)
    assert (hard.layer, hard.location.line) == ("base", 9)


def test_extends_applies_the_parent_overlay_first(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    assert environment_chain(raw, "production") == ["development", "staging", "production"]
    effective = apply_environment(raw, "production")
    retry = effective.data["defaults"]["retry"]
    assert retry == {"on": ["builtins.OSError"], "max_retries": 0, "backoff": {"initial": "3s", "max": "5m"}}
    assert effective.source[("defaults", "retry", "max_retries")].layer == "env:development"
    assert effective.source[("defaults", "retry", "backoff", "initial")].layer == "env:staging"
    assert effective.source[("defaults", "retry", "backoff", "max")].layer == "base"


def test_a_child_overlay_overrides_its_parent(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        environments:
          parent: {worker: {prefetch_multiplier: 4, track_started: true}}
          child: {extends: parent, worker: {prefetch_multiplier: 1}}
        """,
    )
    worker = apply_environment(read_policy_file(path), "child").data["worker"]
    assert worker == {"prefetch_multiplier": 1, "track_started": True}


def test_an_extends_cycle_is_cp112_at_the_extends_that_closes_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        environments:
          a: {extends: b}
          b: {extends: c}
          c: {extends: a}
        """,
    )
    with pytest.raises(PolicyError) as info:
        apply_environment(read_policy_file(path), "a")
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.code == "CP112"
    assert diagnostic.message == "environments extend each other in a cycle: a -> b -> c -> a"
    assert at(diagnostic) == (path, 5, 16)
    assert diagnostic.path == "environments.c.extends"


def test_an_environment_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\nenvironments:\n  a: {extends: a}\n")
    with pytest.raises(PolicyError) as info:
        apply_environment(read_policy_file(path), "a")
    assert only(info.value.diagnostics).code == "CP112"


def test_an_unknown_environment_is_cp111_with_a_did_you_mean(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    with pytest.raises(PolicyError) as info:
        apply_environment(raw, "prodution")
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.code == "CP111"
    assert diagnostic.message == "unknown environment 'prodution'"
    assert diagnostic.hint == "did you mean 'production'?"


def test_an_unknown_environment_without_a_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", OVERLAYS))
    with pytest.raises(PolicyError) as info:
        apply_environment(raw, "qa")
    assert only(info.value.diagnostics).hint == "known environments: development, production, staging"


def test_an_unknown_environment_in_a_file_without_environments_says_so(tmp_path: Path) -> None:
    raw = read_policy_file(write(tmp_path, "p.yaml", "version: 1\n"))
    with pytest.raises(PolicyError) as info:
        apply_environment(raw, "production")
    assert only(info.value.diagnostics).hint == "the file defines no environments"


def test_extending_an_unknown_environment_points_at_the_extends_key(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\nenvironments:\n  prod: {extends: stagin}\n  staging: {}\n")
    with pytest.raises(PolicyError) as info:
        apply_environment(read_policy_file(path), "prod")
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.code == "CP111"
    assert at(diagnostic) == (path, 3, 19)
    assert diagnostic.path == "environments.prod.extends"
    assert diagnostic.hint == "did you mean 'staging'?"


def test_an_invalid_value_inside_an_overlay_is_reported_at_the_overlay_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        defaults:
          retry: {max_retries: 3}
        environments:
          prod:
            defaults:
              retry:
                max_retries: lots
        """,
    )
    raw = read_policy_file(path)
    diagnostic = only(errors_of(raw, "prod"))
    assert at(diagnostic) == (path, 8, 22)
    assert "valid integer" in diagnostic.message
    assert diagnostic.message.endswith(", got lots")
    [overlay_finding] = validate_overlays(raw)
    assert overlay_finding.path == "environments.prod.defaults.retry.max_retries"
    assert at(overlay_finding) == (path, 8, 22)


# --- validation errors at the user's line -------------------------------------------------

NESTED = """\
    version: 1
    tasks:
      "x":
        retry:
          rules:
            - on: [builtins.KeyError]
            - on: [builtins.LookupError]
              backoff:
                initial: 1s
                max: "abc"
    """


def test_a_bad_value_deep_in_a_list_is_reported_at_its_exact_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", NESTED)
    diagnostic = only(errors_of(read_policy_file(path)))
    assert at(diagnostic) == (path, 10, 18)
    assert diagnostic.code == "CP104"
    assert diagnostic.path == "tasks.x.retry.rules[1].backoff.max"
    assert "'abc' is not a duration" in diagnostic.message
    assert diagnostic.hint == (
        "write a number of seconds or a duration such as 500ms, 30s, 5m, 1h30m, 1d, 2w; "
        "units: ms (milliseconds), s, m (minutes), h, d, w (weeks)"
    )
    assert diagnostic.render() == (
        f"{path}:10:18: CP104 error: 'abc' is not a duration; use a number of seconds or e.g. 500ms, 30s, 5m, "
        "1h30m, 1d (units: ms, s, m, h, d, w) (tasks.x.retry.rules[1].backoff.max)"
    )


def test_a_glob_task_key_is_quoted_in_the_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", 'version: 1\ntasks:\n  "reports.*":\n    retry: {max_retries: -1}\n')
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.path == 'tasks."reports.*".retry.max_retries'
    assert at(diagnostic) == (path, 4, 26)
    assert diagnostic.message == "input should be greater than or equal to 0, got -1"


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        defaults:
          timeout: {soft: soon}
          ack: {late: maybe}
          retry: {unknown: ignore}
        """,
    )
    paths = sorted(d.path or "" for d in errors_of(read_policy_file(path)))
    assert paths == ["defaults.ack.late", "defaults.retry.unknown", "defaults.timeout.soft"]


def test_a_bad_choice_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefaults:\n  retry:\n    backoff: {jitter: half}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.path == "defaults.retry.backoff.jitter"
    assert diagnostic.hint == "use one of 'full', 'equal' or 'none'"
    assert at(diagnostic) == (path, 4, 23)


def test_a_mapping_where_a_list_belongs_gets_a_list_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefaults:\n  log:\n    redact_keys: {password: true}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.hint == "this key takes a list, e.g. [a, b]"
    assert diagnostic.path == "defaults.log.redact_keys"


def test_a_missing_required_key_is_reported_at_its_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ntasks:\n  orders.charge:\n    idempotency: {ttl: 1d}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.message == "missing required key 'key' in tasks.\"orders.charge\".idempotency"
    assert diagnostic.hint == "add 'key:'"
    assert at(diagnostic) == (path, 4, 18)


def test_a_missing_version_says_what_to_add(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "defaults: {}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.code == "CP101"
    assert diagnostic.hint == "add 'version: 1' at the top of the file"


def test_an_unsupported_version_is_reported_at_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 2\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.message == "unsupported version 2"
    assert at(diagnostic) == (path, 1, 10)


def test_an_unknown_key_gets_a_did_you_mean_at_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """\
        version: 1
        tasks:
          orders.charge:
            retry:
              max_retry: 3
        """,
    )
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.code == "CP102"
    assert diagnostic.message == "unknown key 'max_retry' in tasks.\"orders.charge\".retry"
    assert diagnostic.hint == "did you mean 'max_retries'?"
    assert at(diagnostic) == (path, 5, 7)
    assert diagnostic.path == 'tasks."orders.charge".retry.max_retry'


def test_an_unknown_top_level_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefault:\n  retry: {}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.message == "unknown key 'default' in the top level"
    assert diagnostic.hint == "did you mean 'defaults'?"
    assert at(diagnostic) == (path, 2, 1)


def test_an_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefaults:\n  timeout: {zzz: 1}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.hint == "allowed keys here: soft, hard, expires"


def test_an_unknown_key_inside_a_rule_lists_rule_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefaults:\n  retry:\n    rules:\n      - {on: [a.B], delay: x}\n")
    diagnostic = only(errors_of(read_policy_file(path)))
    assert diagnostic.path == "defaults.retry.rules[0].delay"
    assert diagnostic.hint == "did you mean 'delay_from'?"
    assert at(diagnostic) == (path, 5, 21)


def test_the_on_key_of_a_rule_is_not_read_as_true(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\ndefaults:\n  retry:\n    on: [builtins.OSError]\n    never: []\n")
    document = validate_document(read_policy_file(path))
    assert document.defaults.retry.on == ["builtins.OSError"]


def test_a_valid_file_validates_to_a_document(tmp_path: Path) -> None:
    document = validate_document(read_policy_file(write(tmp_path, "p.yaml", BASE)))
    assert isinstance(document, PolicyDocument)
    assert document.defaults.retry.backoff.max == 300.0
    assert document.tasks["reports.*"].timeout.hard == 1860.0


# --- files that are not policies ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n", "# nothing here\n", "---\n...\n"])
def test_an_empty_file_is_cp101(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.code == "CP101"
    assert diagnostic.message == "policy file is empty"
    assert diagnostic.hint == "start it with 'version: 1'"


@pytest.mark.parametrize(("text", "kind"), [("- a\n", "a list"), ("hello\n", "a string"), ("42\n", "a number")])
def test_a_file_that_is_not_a_mapping_is_cp101(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    assert only(info.value.diagnostics).message.startswith(f"a policy file is a mapping, got {kind}")


def test_a_binary_file_is_rejected_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    assert only(info.value.diagnostics).message == "not a text file (it contains NUL bytes)"


def test_a_file_that_is_not_utf8_is_reported_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\ntasks:\n  caf\xe9: {}\n")
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.message == "not UTF-8 text"
    assert at(diagnostic) == (str(path), 3, 6)


def test_a_file_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n" + b"#" * MAX_FILE_BYTES)
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    diagnostic = only(info.value.diagnostics)
    assert diagnostic.code == "CP100"
    assert diagnostic.message.startswith("policy file is too large")
    assert not isinstance(info.value, UnreadableFileError)


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    header = b"version: 1\n"
    path.write_bytes(header + b"#" * (MAX_FILE_BYTES - len(header)))
    assert read_policy_file(path).data == {"version": 1}


def test_a_missing_file_is_an_unreadable_file_error(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError) as info:
        read_policy_file(tmp_path / "missing.yaml")
    assert "No such file" in only(info.value.diagnostics).message


def test_a_directory_is_an_unreadable_file_error(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError):
        read_policy_file(tmp_path)


def test_the_default_path_is_the_conventional_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_POLICY_FILE", raising=False)
    assert default_policy_paths() == [DEFAULT_POLICY_PATH]


def test_celery_policy_file_may_name_several_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_POLICY_FILE", "base.yaml:team.yaml:")
    assert default_policy_paths() == ["base.yaml", "team.yaml"]
