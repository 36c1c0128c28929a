#!/usr/bin/env bash
# The main job: set up .venv and redis-server, then run a real worker of the demo shop
# under policies/demo.yaml and show retries, a permanent failure, a soft time limit,
# and the dead-letter list/replay.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
