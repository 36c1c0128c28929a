#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine (Python >= 3.10 present, nothing else):
#   1. .venv (python3 -m venv) with this package installed editable plus its [test] extra;
#   2. a redis-server binary for the test fixtures.
# It starts nothing: the tests run their own redis-server on free ports, never the system one on 6379.
# A second run with an unchanged pyproject.toml skips pip entirely (stamp file in .venv).
#
# Environment: PYTHON (default python3) picks the interpreter for a new .venv;
# REDIS_SERVER may point at a redis-server binary outside PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
STAMP=$VENV/.celery-policy-bootstrap

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
    printf 'bootstrap: error: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# apt-get install as root without letting the package start its service: Debian's
# redis-server postinst would otherwise start a system Redis on port 6379.
apt_install() {
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from celery-policy scripts/bootstrap.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
    } || status=$?
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    return "$status"
}

# --- Python ------------------------------------------------------------------

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found" "install Python 3.10 or newer, or set PYTHON=/path/to/python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$("$PYTHON" -V 2>&1) is too old" "celery-policy needs Python 3.10 or newer; set PYTHON=/path/to/python3.11"

venv_works() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; }

if [ -e "$VENV" ] && ! venv_works; then
    # Never delete a virtualenv on our own: it may only be unreadable for this user.
    die "$VENV exists but its python does not run" "if it is stale (e.g. made by another Python), run: rm -rf .venv && ./scripts/bootstrap.sh"
fi
if ! venv_works; then
    # Debian's system Python ships venv without ensurepip until python3-venv is installed.
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        if is_root; then
            log "installing python${pyver}-venv (ensurepip is missing)"
            apt_install "python${pyver}-venv" || apt_install python3-venv
        else
            die "$PYTHON cannot create virtualenvs (ensurepip is missing)" \
                "run: sudo apt-get install -y python${pyver}-venv" "then: ./scripts/bootstrap.sh"
        fi
    fi
    log "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

# The stamp holds a hash of everything that decides what pip installs: pyproject.toml,
# the interpreter and the checkout's path (the install is editable).
wanted=$(
    "$VENV/bin/python" - "$ROOT" <<'PY'
import hashlib, sys
root = sys.argv[1]
digest = hashlib.sha256()
with open(f"{root}/pyproject.toml", "rb") as f:
    digest.update(f.read())
digest.update(sys.version.encode())
digest.update(root.encode())
print(digest.hexdigest())
PY
)

if [ "$(cat "$STAMP" 2>/dev/null)" = "$wanted" ] && "$VENV/bin/python" -c 'import celery_policy, pytest' >/dev/null 2>&1; then
    log "python packages are current (pyproject.toml unchanged)"
else
    log "installing celery-policy (editable) with the [test] extra into .venv"
    pip_log=$(mktemp)
    # pip's (and the build backend's) chatter is shown only when the install fails.
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install --editable "$ROOT[test]" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install -e '.[test]' failed (output above)" "fix the cause, then run ./scripts/bootstrap.sh again"
    fi
    rm -f "$pip_log"
    printf '%s\n' "$wanted" >"$STAMP"
fi

# --- redis-server (a binary only; the tests start their own servers) ----------

find_redis() {
    if [ -n "${REDIS_SERVER:-}" ]; then
        [ -x "$REDIS_SERVER" ] && { echo "$REDIS_SERVER"; return 0; }
        return 1
    fi
    command -v redis-server 2>/dev/null && return 0
    for candidate in /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
        [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
    return 1
}

if ! redis_bin=$(find_redis); then
    if [ -n "${REDIS_SERVER:-}" ]; then
        die "REDIS_SERVER=$REDIS_SERVER is not an executable file" "unset it to use redis-server from PATH"
    elif is_root; then
        log "installing redis-server (apt-get; the service is not started)"
        apt_install redis-server
        redis_bin=$(find_redis) || die "redis-server is still missing after apt-get install redis-server"
    else
        die "redis-server is not installed (the test suite starts its own servers with it)" \
            "run: sudo apt-get update && sudo apt-get install -y redis-server" \
            "then: ./scripts/bootstrap.sh"
    fi
fi

# --- rabbitmq-server, for the test suite only (scripts/test.sh asks for it) -----
# The RabbitMQ tests use the broker on 127.0.0.1:5672 and start `rabbitmq-server -detached`
# when nothing answers there; the demo does not need it.
if [ "${CELERY_POLICY_NEED_RABBITMQ:-}" = 1 ] && ! command -v rabbitmq-server >/dev/null 2>&1 \
    && [ ! -x /usr/sbin/rabbitmq-server ]; then
    if is_root; then
        log "installing rabbitmq-server (apt-get; the service is not started, the tests start it)"
        apt_install rabbitmq-server
    else
        die "rabbitmq-server is not installed (the RabbitMQ tests need it)" \
            "run: sudo apt-get update && sudo apt-get install -y rabbitmq-server" \
            "then: ./scripts/test.sh"
    fi
fi

# --- chromium, for the test suite only: the console's browser tests (tests/web/) -------------------
# Debian's own chromium, driven headless by Playwright from .venv; no browser is ever downloaded.
find_chromium() {
    for candidate in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
        [ -n "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
    return 1
}
if [ "${CELERY_POLICY_NEED_CHROMIUM:-}" = 1 ] && ! find_chromium >/dev/null; then
    if is_root; then
        log "installing chromium (apt-get; for the web console's browser tests)"
        apt_install chromium
        find_chromium >/dev/null || die "chromium is still missing after apt-get install chromium"
    else
        die "chromium is not installed (the web console's browser tests drive it headless)" \
            "run: sudo apt-get update && sudo apt-get install -y chromium" \
            "then: ./scripts/test.sh"
    fi
fi

log "ready: $("$VENV/bin/python" -V 2>&1) in .venv, $("$redis_bin" --version | cut -d' ' -f1-3)"
