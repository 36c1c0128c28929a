#!/usr/bin/env bash
# Run the whole test suite: bootstrap (fast when nothing changed), then pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k worker -v
# Exits non-zero when a test fails and also when no test was collected (pytest exit 5).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CELERY_POLICY_NEED_RABBITMQ=1 bash scripts/bootstrap.sh

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
exit "$status"
