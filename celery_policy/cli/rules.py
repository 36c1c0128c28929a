"""``celery-policy rules [RULE]``: the rule list, or one rule's documentation."""

from __future__ import annotations

import difflib

import click

from celery_policy.cli.exit import OK, USAGE


def run_rules(rule: str | None = None) -> int:
    """List every rule, or print one rule's documentation. Returns the exit code."""
    import celery_policy.lint.rules  # noqa: F401  (registers the rules)
    from celery_policy.lint.registry import RULES, find_rule
    from celery_policy.lint.report import describe_rule, render_rule_list

    if rule is None:
        rows = [
            (r.code, r.name, r.severity, r.summary + (" [--app]" if r.needs_app else ""))
            for r in sorted(RULES.values(), key=lambda r: r.code)
        ]
        click.echo(render_rule_list(rows), nl=False)
        return OK
    found = find_rule(rule)
    if found is None:
        choices = [c for r in RULES.values() for c in (r.code, r.name)]
        close = difflib.get_close_matches(rule.upper() if rule[:2].upper() == "CP" else rule, choices, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; run 'celery-policy rules' for the list"
        click.echo(f"celery-policy rules: error: unknown rule '{rule}'{hint}", err=True)
        return USAGE
    click.echo(describe_rule(found), nl=False)
    return OK


@click.command()
@click.argument("rule", required=False)
def rules(rule: str | None) -> int:
    """List the lint rules, or explain RULE (e.g. CP103) with a bad and a good example."""
    return run_rules(rule)
