"""Precedence and provenance: one test per adjacent pair of layers, then per-field merging."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from celery_policy import Policy, PolicyError, load
from celery_policy.resolve import BUILTIN_LAYER, Provenance


def policy_from(tmp_path: Path, text: str, *, env: str | None = None, name: str = "policy.yaml") -> Policy:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load(path, env=env)


def line_of(policy: Policy, task: str, field: str) -> int:
    provenance = policy.for_task(task).source_of(field)
    assert provenance.location is not None
    return provenance.location.line


# --- one test per adjacent pair of layers ------------------------------------------


def test_builtin_is_used_when_nothing_sets_a_field(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "version: 1\n")
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 3
    assert resolved.policy.retry.backoff.max == 600.0
    assert resolved.source_of("retry.max_retries") == Provenance(BUILTIN_LAYER)
    assert str(resolved.source_of("retry.max_retries")) == "builtin"


def test_defaults_beat_builtin(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          retry: {max_retries: 5}
        """,
    )
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 5
    source = resolved.source_of("retry.max_retries")
    assert source.layer == "defaults"
    assert str(source) == f"{tmp_path / 'policy.yaml'}:3 (defaults)"


def test_a_glob_beats_defaults(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          timeout: {soft: 5m}
        tasks:
          "reports.*":
            timeout: {soft: 30m}
        """,
    )
    resolved = policy.for_task("reports.daily")
    assert resolved.policy.timeout.soft == 1800.0
    assert resolved.source_of("timeout.soft").layer == 'tasks."reports.*"'
    assert policy.for_task("orders.charge").policy.timeout.soft == 300.0


@pytest.mark.parametrize("specific_first", [True, False])
def test_a_glob_with_fewer_wildcards_beats_one_with_more(tmp_path: Path, specific_first: bool) -> None:
    """``*.charge`` (one wildcard) beats ``orders.ch*r*`` (two) even though the latter has a longer prefix."""
    specific = '  "*.charge": {retry: {max_retries: 1}}\n'
    general = '  "orders.ch*r*": {retry: {max_retries: 2}}\n'
    body = specific + general if specific_first else general + specific
    policy = policy_from(tmp_path, "version: 1\ntasks:\n" + body)
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 1
    assert resolved.layers == ("defaults", 'tasks."orders.ch*r*"', 'tasks."*.charge"')


@pytest.mark.parametrize("specific_first", [True, False])
def test_at_equal_wildcards_a_longer_literal_prefix_wins(tmp_path: Path, specific_first: bool) -> None:
    specific = '  "orders.*": {retry: {max_retries: 1}}\n'
    general = '  "ord*": {retry: {max_retries: 2}}\n'
    body = specific + general if specific_first else general + specific
    policy = policy_from(tmp_path, "version: 1\ntasks:\n" + body)
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 1
    assert resolved.source_of("retry.max_retries").layer == 'tasks."orders.*"'
    assert policy.for_task("ordinal").policy.retry.max_retries == 2


def test_an_exact_name_beats_the_most_specific_glob(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          orders.charge:
            retry: {max_retries: 8}
          "orders.charg?":
            retry: {max_retries: 1}
        """,
    )
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 8
    assert resolved.layers == ("defaults", 'tasks."orders.charg?"', 'tasks."orders.charge"')
    assert line_of(policy, "orders.charge", "retry.max_retries") == 4


def test_an_environment_overlay_beats_the_base_file(tmp_path: Path) -> None:
    text = """\
        version: 1
        tasks:
          orders.charge:
            timeout: {soft: 5m, hard: 6m}
        environments:
          production:
            tasks:
              orders.charge: {timeout: {soft: 90s}}
        """
    base = policy_from(tmp_path, text)
    production = policy_from(tmp_path, text, env="production")
    assert base.for_task("orders.charge").policy.timeout.soft == 300.0
    resolved = production.for_task("orders.charge")
    assert resolved.policy.timeout.soft == 90.0
    assert resolved.policy.timeout.hard == 360.0
    soft = resolved.source_of("timeout.soft")
    assert (soft.layer, soft.overlay) == ('tasks."orders.charge"', "env:production")
    assert str(soft) == f'{tmp_path / "policy.yaml"}:8 (tasks."orders.charge", env:production)'
    assert resolved.source_of("timeout.hard").overlay == "base"


def test_for_task_can_switch_environment(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults: {retry: {max_retries: 5}}
        environments:
          development: {defaults: {retry: {max_retries: 0}}}
        """,
    )
    assert policy.for_task("t", env="development").policy.retry.max_retries == 0
    assert policy.for_task("t", env="development").env == "development"
    assert policy.for_task("t").policy.retry.max_retries == 5
    assert policy.with_env("development") is policy.with_env("development")


def test_an_overlay_can_make_a_weaker_layer_win_for_fields_the_stronger_one_does_not_set(tmp_path: Path) -> None:
    """Overlays merge into the document; precedence between layers is applied afterwards."""
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          orders.charge: {retry: {max_retries: 8}}
        environments:
          production:
            defaults: {retry: {max_retries: 1, deadline: 10m}}
        """,
        env="production",
    )
    retry = policy.for_task("orders.charge").policy.retry
    assert (retry.max_retries, retry.deadline) == (8, 600.0)


# --- per-field merging -----------------------------------------------------------------


def test_a_task_that_sets_only_max_retries_keeps_the_default_backoff(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          retry:
            max_retries: 5
            backoff: {initial: 2s, factor: 3, max: 5m, jitter: equal}
        tasks:
          orders.charge:
            retry: {max_retries: 8}
        """,
    )
    resolved = policy.for_task("orders.charge")
    backoff = resolved.policy.retry.backoff
    assert resolved.policy.retry.max_retries == 8
    assert (backoff.initial, backoff.factor, backoff.max, backoff.jitter) == (2.0, 3.0, 300.0, "equal")
    assert resolved.source_of("retry.backoff.factor").layer == "defaults"
    assert resolved.source_of("retry.max_retries").layer == 'tasks."orders.charge"'


def test_a_task_that_sets_one_backoff_field_keeps_the_others(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          retry: {backoff: {initial: 2s, max: 5m}}
        tasks:
          "reports.*": {retry: {backoff: {max: 1h}}}
        """,
    )
    backoff = policy.for_task("reports.daily").policy.retry.backoff
    assert (backoff.initial, backoff.max) == (2.0, 3600.0)


@pytest.mark.parametrize(
    "text",
    [
        "defaults: {retry: {max_retries: 0}}",
        "defaults: {retry: {max_retries: 5}}\ntasks: {orders.charge: {retry: {max_retries: 0}}}",
        "defaults: {retry: {max_retries: 5}}\ntasks: {'orders.*': {retry: {max_retries: 0}}}",
        "defaults: {retry: {max_retries: 5}}\n"
        "tasks: {'orders.*': {retry: {max_retries: 0}}, orders.charge: {ack: {late: true}}}",
        "defaults: {retry: {max_retries: 5}}\nenvironments: {dev: {tasks: {orders.charge: {retry: {max_retries: 0}}}}}",
    ],
)
def test_max_retries_zero_survives(tmp_path: Path, text: str) -> None:
    env = "dev" if "environments" in text else None
    policy = policy_from(tmp_path, "version: 1\n" + text + "\n", env=env)
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.retry.max_retries == 0
    assert resolved.source_of("retry.max_retries").layer != BUILTIN_LAYER


def test_false_and_empty_list_override_stronger_defaults(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          ack: {late: true}
          retry: {on: [builtins.TimeoutError]}
        tasks:
          orders.charge:
            ack: {late: false}
            retry: {on: []}
        """,
    )
    resolved = policy.for_task("orders.charge")
    assert resolved.policy.ack.late is False
    assert resolved.policy.retry.on == []


def test_lists_replace_rather_than_append(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          retry: {on: [builtins.TimeoutError, builtins.ConnectionError]}
        tasks:
          orders.charge:
            retry: {on: [builtins.KeyError]}
        """,
    )
    assert policy.for_task("orders.charge").policy.retry.on == ["builtins.KeyError"]


def test_an_empty_mapping_does_not_reset_weaker_layers(tmp_path: Path) -> None:
    """``timeout: {}`` sets no field, so the default timeouts stay."""
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          timeout: {soft: 5m, hard: 6m}
          retry: {backoff: {initial: 3s}}
        tasks:
          orders.charge:
            timeout: {}
            retry: {backoff: {}}
        """,
    )
    resolved = policy.for_task("orders.charge")
    assert (resolved.policy.timeout.soft, resolved.policy.timeout.hard) == (300.0, 360.0)
    assert resolved.policy.retry.backoff.initial == 3.0
    assert resolved.source_of("timeout.soft").layer == "defaults"


def test_an_explicit_null_section_resets_it(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          "orders.*": {route: {queue: orders}}
          orders.charge: {route: null}
        """,
    )
    assert policy.for_task("orders.refund").policy.route is not None
    assert policy.for_task("orders.charge").policy.route is None


def test_rules_come_whole_from_one_layer(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          retry:
            rules:
              - {on: [builtins.KeyError], max_retries: 1}
              - {on: [builtins.OSError], max_retries: 2}
        tasks:
          orders.charge:
            retry:
              rules:
                - on: [builtins.LookupError]
                  backoff: {initial: 10s}
        """,
    )
    resolved = policy.for_task("orders.charge")
    [rule] = resolved.policy.retry.rules
    assert rule.on == ["builtins.LookupError"]
    assert rule.backoff is not None
    assert rule.backoff.model_fields_set == {"initial"}
    assert resolved.source_of("retry.rules").layer == 'tasks."orders.charge"'


def test_a_task_matched_by_no_pattern_gets_defaults_and_builtins(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults: {retry: {max_retries: 5}}
        tasks:
          "reports.*": {retry: {max_retries: 1}}
          orders.charge: {retry: {max_retries: 8}}
        """,
    )
    resolved = policy.for_task("billing.invoice")
    assert resolved.layers == ("defaults",)
    assert resolved.policy.retry.max_retries == 5
    assert resolved.policy.timeout.soft is None
    assert resolved.source_of("timeout.soft").layer == BUILTIN_LAYER


def test_globs_match_case_sensitively_and_whole_names(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          "orders.*": {retry: {max_retries: 1}}
          "[ab]*.sync": {retry: {max_retries: 2}}
        """,
    )
    assert policy.for_task("Orders.charge").layers == ("defaults",)
    assert policy.for_task("xorders.charge").layers == ("defaults",)
    assert policy.for_task("a.sync").policy.retry.max_retries == 2
    assert policy.for_task("billing.sync").policy.retry.max_retries == 2
    assert policy.for_task("c.sync").layers == ("defaults",)


def test_tasks_with_the_same_matching_layers_share_one_resolved_policy(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, 'version: 1\ntasks:\n  "orders.*": {retry: {max_retries: 1}}\n')
    first = policy.for_task("orders.charge")
    second = policy.for_task("orders.refund")
    assert first.task == "orders.charge"
    assert second.task == "orders.refund"
    assert first.policy is second.policy


# --- conflicts ------------------------------------------------------------------------------


def test_equally_specific_globs_setting_one_field_differently_are_cp110(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          "orders.*":
            retry: {max_retries: 1}
          "orders.?harge":
            retry: {max_retries: 7}
        """,
    )
    with pytest.raises(PolicyError) as info:
        policy.for_task("orders.charge")
    [diagnostic] = info.value.diagnostics
    assert diagnostic.code == "CP110"
    assert "'orders.*' and 'orders.?harge' are equally specific" in diagnostic.message
    assert "retry.max_retries for task 'orders.charge' (1 vs 7)" in diagnostic.message
    assert diagnostic.location is not None
    assert diagnostic.location.line == 6
    assert diagnostic.hint is not None
    assert f"{tmp_path / 'policy.yaml'}:4:" in diagnostic.hint
    assert policy.for_task("orders.refund").policy.retry.max_retries == 1


def test_equally_specific_globs_agreeing_or_setting_different_fields_do_not_conflict(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          "orders.*": {retry: {max_retries: 1}, timeout: {soft: 1m}}
          "orders.?harge": {retry: {max_retries: 1}, ack: {late: true}}
        """,
    )
    resolved = policy.for_task("orders.charge")
    assert (resolved.policy.retry.max_retries, resolved.policy.timeout.soft, resolved.policy.ack.late) == (
        1,
        60.0,
        True,
    )


def test_an_exact_entry_does_not_silence_a_glob_conflict(tmp_path: Path) -> None:
    """The conflict is still reported: the exact entry might not set the field the globs disagree on."""
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        tasks:
          "orders.*": {retry: {max_retries: 1}}
          "orders.?harge": {retry: {max_retries: 7}}
          orders.charge: {ack: {late: true}}
        """,
    )
    with pytest.raises(PolicyError):
        policy.for_task("orders.charge")


# --- provenance ------------------------------------------------------------------------------


def test_provenance_names_the_file_line_and_layer_across_files(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    team = tmp_path / "team.yaml"
    base.write_text("version: 1\ndefaults:\n  retry:\n    max_retries: 5\n    deadline: 1h\n")
    team.write_text('version: 1\ntasks:\n  "orders.*":\n    retry:\n      deadline: 10m\n')
    resolved = load([base, team]).for_task("orders.charge")
    max_retries = resolved.source_of("retry.max_retries")
    deadline = resolved.source_of("retry.deadline")
    assert str(max_retries) == f"{base}:4 (defaults)"
    assert str(deadline) == f'{team}:5 (tasks."orders.*")'
    assert deadline.location is not None
    assert deadline.location.column == 17


def test_source_of_a_section_falls_back_to_its_set_ancestor(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "version: 1\ntasks:\n  t:\n    route: null\n")
    resolved = policy.for_task("t")
    assert resolved.source_of("route.queue").layer == "tasks.t"
    assert resolved.source_of("hooks.on_retry").layer == BUILTIN_LAYER


def test_groups_expand_to_dotted_paths(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        errors:
          transient: [builtins.TimeoutError, network]
          network: [builtins.ConnectionError]
        defaults:
          retry: {on: [transient, KeyError]}
        """,
    )
    resolved = policy.for_task("t")
    assert resolved.expand(resolved.policy.retry.on) == (
        "builtins.TimeoutError",
        "builtins.ConnectionError",
        "builtins.KeyError",
    )


def test_load_reports_an_unknown_group_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\nerrors:\n  transient: [builtins.TimeoutError]\ndefaults:\n  retry: {on: [transiant]}\n"
    )
    with pytest.raises(PolicyError) as info:
        load(path)
    [diagnostic] = info.value.diagnostics
    assert diagnostic.code == "CP106"
    assert diagnostic.hint == "did you mean 'transient'?"
    assert diagnostic.location is not None
    assert diagnostic.location.line == 5
