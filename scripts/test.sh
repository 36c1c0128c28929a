#!/usr/bin/env bash
# Run the whole test suite: bootstrap (fast when nothing changed), then
#   1. pytest over tests/ in .venv (Python 3.11 by default, the newest Celery/kombu line);
#   2. the real-worker tests on the oldest supported line, every runtime dependency at its
#      lower bound, on the oldest Python (`nox -s floors`, a virtualenv under .nox/).
# Both run at the same time (the worker tests mostly wait on workers and brokers, so two
# cores carry both); the second's output is printed after the first's, from .nox/floors.log.
# Extra arguments go to the first pytest only and skip the second, e.g. ./scripts/test.sh -k worker -v
# The whole support matrix (every Celery/kombu line, every Python line) is `.venv/bin/nox`.
# Exits non-zero when a test fails and also when no test was collected (pytest exit 5).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CELERY_POLICY_NEED_RABBITMQ=1 CELERY_POLICY_NEED_CHROMIUM=1 bash scripts/bootstrap.sh

floors_pid=""
if [ "$#" -eq 0 ]; then
    mkdir -p .nox
    # nox fails the session when pytest fails or collects nothing, and when Python 3.10 is missing.
    .venv/bin/nox --error-on-missing-interpreters -s floors >.nox/floors.log 2>&1 </dev/null &
    floors_pid=$!
fi

status=0
.venv/bin/python -m pytest \
    -p no:cacheprovider \
    --timeout="${PYTEST_TIMEOUT:-300}" \
    --durations=10 \
    "$@" || status=$?

case "$status" in
    0) ;;
    5) echo "test.sh: pytest collected no tests (exit 5); that counts as a failure" >&2 ;;
    *) echo "test.sh: pytest failed (exit $status)" >&2 ;;
esac

if [ -n "$floors_pid" ]; then
    oldest=0
    wait "$floors_pid" || oldest=$?
    echo "test.sh: nox -s floors (the oldest line), run alongside:" >&2
    cat .nox/floors.log
    if [ "$oldest" -ne 0 ]; then
        echo "test.sh: the oldest-line worker tests failed (nox -s floors, exit $oldest)" >&2
        [ "$status" -ne 0 ] || status=$oldest
    fi
fi
exit "$status"
